//! State of one process of a container (the service's init or an exec) as containerd sees it.
use std::{sync::Arc, time::SystemTime};

use containerd_shim_protos::{api::Status, protobuf::well_known_types::timestamp::Timestamp};
use serde_json::Value;
use tokio::sync::watch;

use crate::stdio::{IoPaths, ProcessIo};

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

pub struct Process {
    /// "" for the init process (the service), else the exec id.
    pub exec_id: String,
    /// Host pid of the process; 0 until an exec is started.
    pub pid: i32,
    pub io_paths: IoPaths,
    pub io: Arc<ProcessIo>,
    /// The OCI process spec of an exec.
    pub spec: Option<Value>,
    started: bool,
    paused: bool,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, io_paths: IoPaths, spec: Option<Value>) -> Self {
        Process {
            exec_id: exec_id.to_string(),
            pid: 0,
            io_paths,
            io: Arc::new(ProcessIo::default()),
            spec,
            started: false,
            paused: false,
            exit: watch::channel(None).0,
        }
    }

    pub fn status(&self) -> Status {
        if self.exited().is_some() {
            Status::STOPPED
        } else if self.paused {
            Status::PAUSED
        } else if self.started {
            Status::RUNNING
        } else {
            Status::CREATED
        }
    }

    pub fn set_started(&mut self) {
        self.started = true;
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn set_exited(&mut self, code: i32) -> Exit {
        let exit = Exit {
            code: code as u32,
            at: SystemTime::now(),
        };
        self.exit.send_replace(Some(exit));
        exit
    }

    /// A future that resolves once the process has exited.
    pub fn wait(&self) -> impl std::future::Future<Output = Option<Exit>> + Send + 'static {
        let mut rx = self.exit.subscribe();
        async move { rx.wait_for(Option::is_some).await.ok().and_then(|e| *e) }
    }
}
