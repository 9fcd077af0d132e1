//! The containerd Task API (v2) over the runtime layer in `container`: each method finds the
//! container, calls it, and publishes the event containerd expects.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim::{
    api::*,
    asynchronous::ExitSignal,
    monitor::{monitor_subscribe, Subject, Topic},
    protos::{
        events::task::*,
        protobuf::{Message, MessageField},
        shim::oci::CheckpointOptions,
        shim_async::Task,
        types::task::ProcessInfo,
    },
    TtrpcContext, TtrpcResult,
};
use log::{debug, info, warn};
use tokio::sync::Mutex as AsyncMutex;

use crate::{
    container::Container,
    error::{Error, Result},
    events::Events,
    migration_service,
    oom::OomWatcher,
    pids::{Owner, PidTable, Role},
    process::{timestamp, Exit},
    runc::CheckpointOpts,
    stdio::IoPaths,
};

/// How long an exit waits for the process's output to drain before it is reported.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

pub struct TaskService {
    inner: Arc<Inner>,
    /// The migration API's ttrpc server, alive as long as the service.
    _migration: Mutex<containerd_shim_protos::ttrpc::r#async::Server>,
}

pub struct Inner {
    containers: Mutex<HashMap<String, Arc<AsyncMutex<Container>>>>,
    pids: Mutex<PidTable>,
    events: Events,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub async fn new(events: Events, exit: Arc<ExitSignal>) -> Result<Self> {
        let inner = Arc::new(Inner {
            containers: Mutex::default(),
            pids: Mutex::default(),
            events,
            exit,
        });
        let mut sub = monitor_subscribe(Topic::Pid).await?;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(ev) = sub.rx.recv().await {
                let Subject::Pid(pid) = ev.subject else {
                    continue;
                };
                let Some(inner) = weak.upgrade() else { break };
                let owner = inner.pids.lock().expect("lock").exited(pid, ev.exit_code);
                if let Some(owner) = owner {
                    tokio::spawn(inner.clone().on_exit(owner, pid, ev.exit_code));
                }
            }
        });
        let migration = migration_service::serve(inner.clone()).await?;
        Ok(TaskService {
            inner,
            _migration: Mutex::new(migration),
        })
    }
}

impl Inner {
    pub(crate) fn container(&self, id: &str) -> Result<Arc<AsyncMutex<Container>>> {
        self.containers
            .lock()
            .expect("lock")
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))
    }

    fn register(self: &Arc<Self>, pid: i32, container: &str, role: Role) {
        let owner = Owner {
            container: container.to_string(),
            role,
        };
        let early = self.pids.lock().expect("lock").register(pid, owner.clone());
        if let Some(code) = early {
            tokio::spawn(self.clone().on_exit(owner, pid, code));
        }
    }

    fn register_service(self: &Arc<Self>, pid: i32, container: &str, exec_id: &str) {
        let role = Role::Service {
            exec_id: exec_id.to_string(),
        };
        self.register(pid, container, role);
    }

    /// TaskExit of the init (`exec_id` empty: reported with the task pid) or of an exec.
    async fn publish_exit(&self, container: &str, exec_id: &str, pid: i32, exit: Exit) {
        self.events
            .publish(TaskExit {
                container_id: container.to_string(),
                id: if exec_id.is_empty() {
                    container
                } else {
                    exec_id
                }
                .to_string(),
                pid: pid as u32,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.timestamp()),
                ..Default::default()
            })
            .await;
    }

    fn watch_oom(self: &Arc<Self>, container: &str, outer_pid: i32) {
        let mut watcher = match OomWatcher::new(outer_pid) {
            Ok(w) => w,
            Err(e) => return warn!("no OOM events for {container}: {e}"),
        };
        let weak = Arc::downgrade(self);
        let container = container.to_string();
        tokio::spawn(async move {
            while watcher.next().await.is_some() {
                let Some(inner) = weak.upgrade() else { break };
                if inner.container(&container).is_err() {
                    break;
                }
                inner
                    .events
                    .publish(TaskOOM {
                        container_id: container.clone(),
                        ..Default::default()
                    })
                    .await;
            }
        });
    }

    async fn on_exit(self: Arc<Self>, owner: Owner, pid: i32, code: i32) {
        let Ok(c) = self.container(&owner.container) else {
            return;
        };
        match owner.role {
            Role::Outer => {
                // The holder died under the service (OOM killer, a stray kill): end the
                // service so containerd learns the task is gone.
                let c = c.lock().await;
                if c.init.exited().is_none() {
                    warn!("outer of {} (pid {pid}) died; killing the service", c.id);
                    let _ = c.kill("", libc::SIGKILL as u32, true).await;
                }
            }
            Role::Service { exec_id } => {
                let io = match c.lock().await.process(&exec_id) {
                    Ok(p) => p.io.clone(),
                    Err(_) => return,
                };
                io.wait_output(OUTPUT_DRAIN).await;
                let mut c = c.lock().await;
                let outer_pid = c.outer_pid;
                let id = c.id.clone();
                let Ok(p) = c.process_mut(&exec_id) else {
                    return;
                };
                let exit = p.set_exited(code);
                debug!("{id}/{exec_id}: pid {pid} exited with {code}");
                let event_pid = if exec_id.is_empty() {
                    c.kill_outer();
                    outer_pid
                } else {
                    pid
                };
                self.publish_exit(&id, &exec_id, event_pid, exit).await;
            }
        }
    }
}

fn io_paths(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> IoPaths {
    IoPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

fn checkpoint_opts(req: &CheckpointTaskRequest) -> Result<CheckpointOpts> {
    let mut opts = CheckpointOpts {
        image_path: req.path.clone().into(),
        leave_running: true,
        ..Default::default()
    };
    if let Some(any) = req.options.as_ref() {
        if !any.value.is_empty() {
            let o = CheckpointOptions::parse_from_bytes(&any.value)
                .map_err(|e| Error::InvalidArgument(format!("invalid checkpoint options: {e}")))?;
            opts.leave_running = !o.exit;
            opts.tcp_established = o.open_tcp;
            opts.ext_unix_sk = o.external_unix_sockets;
            opts.shell_job = o.terminal;
            opts.file_locks = o.file_locks;
            opts.empty_ns = o.empty_namespaces.clone();
            opts.cgroups_mode = Some(o.cgroups_mode.clone()).filter(|m| !m.is_empty());
            if !o.image_path.is_empty() {
                opts.image_path = o.image_path.clone().into();
            }
            opts.work_path = o.work_path.clone().into();
        }
    }
    if opts.image_path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(
            "checkpoint needs an image path".into(),
        ));
    }
    Ok(opts)
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        info!("create {} in {}", req.id, req.bundle);
        if self.inner.container(&req.id).is_ok() {
            return Err(Error::AlreadyExists(format!("task {} already exists", req.id)).into());
        }
        let c = Container::create(&req).await?;
        let (outer_pid, init_pid) = (c.outer_pid, c.init.pid);
        self.inner
            .containers
            .lock()
            .expect("lock")
            .insert(req.id.clone(), Arc::new(AsyncMutex::new(c)));
        self.inner.register(outer_pid, &req.id, Role::Outer);
        self.inner.watch_oom(&req.id, outer_pid);
        // 0: a migration's destination, whose service appears at Start.
        if init_pid > 0 {
            self.inner.register_service(init_pid, &req.id, "");
        }
        let address_file = std::path::Path::new(&req.bundle).join("ums/migration.address");
        if let Err(e) = tokio::fs::write(&address_file, migration_service::address()).await {
            warn!("write {}: {e}", address_file.display());
        }
        self.inner
            .events
            .publish(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid: outer_pid as u32,
                ..Default::default()
            })
            .await;
        Ok(CreateTaskResponse {
            pid: outer_pid as u32,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let c = self.inner.container(&req.id)?;
        if req.exec_id.is_empty() {
            // A migration's destination: wait for the images without holding the task.
            let images = c.lock().await.incoming.as_ref().map(|i| i.wait());
            if let Some(images) = images {
                images.await?;
            }
        }
        let mut c = c.lock().await;
        // Execs, and a restored service, get their pid only now.
        let new_pid = !req.exec_id.is_empty() || c.incoming.is_some();
        let pid = c.start(&req.exec_id).await?;
        if new_pid {
            self.inner.register_service(pid, &req.id, &req.exec_id);
        }
        let pid = if req.exec_id.is_empty() {
            self.inner
                .events
                .publish(TaskStart {
                    container_id: req.id.clone(),
                    pid: c.outer_pid as u32,
                    ..Default::default()
                })
                .await;
            c.outer_pid
        } else {
            self.inner
                .events
                .publish(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                })
                .await;
            pid
        };
        // The task runs: what creating and starting it mapped need not stay resident.
        drop(c);
        crate::resident::drop_clean_file_pages_soon();
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let c = self.inner.container(&req.id)?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        let exit = p.exited();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: if req.exec_id.is_empty() {
                c.outer_pid as u32
            } else {
                p.pid as u32
            },
            status: p.status().into(),
            stdin: p.io_paths.stdin.clone(),
            stdout: p.io_paths.stdout.clone(),
            stderr: p.io_paths.stderr.clone(),
            terminal: p.io_paths.terminal,
            exit_status: exit.map(|e| e.code).unwrap_or(0),
            exited_at: MessageField::from_option(exit.map(|e| e.timestamp())),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let wait = {
            let c = self.inner.container(&req.id)?;
            let c = c.lock().await;
            c.process(&req.exec_id)?.wait()
        };
        let exit = wait
            .await
            .ok_or_else(|| Error::NotFound(format!("task {} went away while waiting", req.id)))?;
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let mut c = c.lock().await;
        if req.exec_id.is_empty() && c.init.pid == 0 && c.init.exited().is_none() {
            // A migration's destination whose service was never restored: there is no
            // process to signal, so the task ends here as if the signal had killed it.
            if let Some(i) = &mut c.incoming {
                i.abort("task killed");
            }
            c.kill_outer();
            let exit = c.init.set_exited(128 + req.signal as i32);
            self.inner
                .publish_exit(&req.id, "", c.outer_pid, exit)
                .await;
            return Ok(Empty::new());
        }
        c.kill(&req.exec_id, req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let arc = self.inner.container(&req.id)?;
        let mut c = arc.lock().await;
        c.ensure_not_migrating()?;
        let p = c.process(&req.exec_id)?;
        let status = p.status();
        if status == Status::RUNNING || status == Status::PAUSED {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete {} of task {}: it is {status:?}",
                if req.exec_id.is_empty() {
                    "the init process"
                } else {
                    &req.exec_id
                },
                req.id
            ))
            .into());
        }
        let exit = p.exited();
        let resp = DeleteResponse {
            pid: if req.exec_id.is_empty() {
                c.outer_pid as u32
            } else {
                p.pid as u32
            },
            exit_status: exit.map(|e| e.code).unwrap_or(0),
            exited_at: MessageField::some(
                exit.map(|e| e.timestamp())
                    .unwrap_or_else(|| timestamp(std::time::SystemTime::now())),
            ),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            if let Some(p) = c.execs.remove(&req.exec_id) {
                p.io.close();
            }
            return Ok(resp);
        }
        c.destroy().await;
        drop(c);
        self.inner.containers.lock().expect("lock").remove(&req.id);
        self.inner
            .pids
            .lock()
            .expect("lock")
            .forget_container(&req.id);
        self.inner
            .events
            .publish(TaskDelete {
                container_id: req.id.clone(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at.clone(),
                id: req.id.clone(),
                ..Default::default()
            })
            .await;
        info!("deleted {}", req.id);
        Ok(resp)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let c = self.inner.container(&req.id)?;
        let pids = c.lock().await.pids().await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.lock().await.pause().await?;
        self.inner
            .events
            .publish(TaskPaused {
                container_id: req.id,
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        c.lock().await.resume().await?;
        self.inner
            .events
            .publish(TaskResumed {
                container_id: req.id,
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        let opts = checkpoint_opts(&req)?;
        let c = self.inner.container(&req.id)?;
        c.lock().await.checkpoint(opts).await?;
        self.inner
            .events
            .publish(TaskCheckpointed {
                container_id: req.id,
                checkpoint: req.path,
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec without a process spec".into()))?;
        c.lock().await.add_exec(
            &req.exec_id,
            io_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            spec,
        )?;
        self.inner
            .events
            .publish(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            })
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let c = c.lock().await;
        c.process(&req.exec_id)?.io.resize(req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let c = c.lock().await;
        if req.stdin {
            c.process(&req.exec_id)?.io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let c = self.inner.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update without resources".into()))?;
        c.lock().await.update(resources).await?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let c = self.inner.container(&req.id)?;
        let stats = c.lock().await.stats().await?;
        Ok(StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = match self.inner.container(&req.id) {
            Ok(c) => c.lock().await.outer_pid as u32,
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.inner.containers.lock().expect("lock").is_empty() {
            info!("no tasks left: shim exits");
            let _ = std::fs::remove_file(migration_service::socket_path());
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}
