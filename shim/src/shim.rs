//! The shim process itself (containerd's `start` / `delete` / serve lifecycle).
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::{spawn, util::write_str_to_file, ExitSignal, Shim},
    publisher::RemotePublisher,
    Config, Flags, StartOpts,
};
use containerd_shim_protos::{api::DeleteResponse, protobuf::MessageField};
use log::error;

use crate::{container::cleanup, events::Events, process::timestamp, service::TaskService};

/// Annotations that put several containers into one shim (a pod's sandbox and its
/// containers), as containerd's runc shim does.
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

pub struct UmsShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for UmsShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        UmsShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let mut grouping = opts.id.clone();
        // cwd is the bundle; a missing or bad spec is reported at create time.
        if let Ok(text) = tokio::fs::read_to_string("config.json").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(group) = GROUP_LABELS
                    .iter()
                    .find_map(|l| v.pointer(&format!("/annotations/{}", l.replace('/', "~1"))))
                    .and_then(|g| g.as_str())
                {
                    grouping = group.to_string();
                }
            }
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // cwd is the bundle of a task whose shim is gone.
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "current dir".into(),
            err: e,
        })?;
        cleanup(&bundle).await;
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(std::time::SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        match TaskService::new(Events::new(publisher, &self.namespace), self.exit.clone()).await {
            Ok(s) => s,
            Err(e) => {
                error!("cannot start the task service: {e}");
                std::process::exit(1);
            }
        }
    }
}
