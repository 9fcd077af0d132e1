//! One container of the ums runtime: an OUTER runc container (the holder, with the identity
//! containerd sees) and the nested SERVICE runc container, both in a runc root of their own
//! inside the bundle (`<bundle>/ums/runc`), so nothing is shared between containerds or pods.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use containerd_shim::mount::umount_recursive;
use containerd_shim_protos::{api::CreateTaskRequest, protobuf::well_known_types::any::Any};
use log::{info, warn};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    holder,
    lazy_pages::{PagesIn, Serving},
    metrics,
    migration::{
        received_dirs, DumpJob, InFlight, Incoming, Outgoing, RestoreJob, CRIU_CONF,
        RESTORE_ANNOTATION,
    },
    process::Process,
    runc::{CheckpointOpts, ChildStdio, Runc},
    spec::BundleSpec,
    stdio::{IoPaths, ProcessIo},
};

/// runc ids inside the container's private runc root.
pub const OUTER: &str = "outer";
pub const SERVICE: &str = "service";

/// Post-copy pages in flight, on either side.
pub enum Pages {
    Out(Serving),
    In(PagesIn),
}

fn ums_dir(bundle: &Path) -> PathBuf {
    bundle.join("ums")
}

fn runc_for(bundle: &Path) -> Runc {
    Runc::new(ums_dir(bundle).join("runc"))
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    runc: Runc,
    /// Pid of the outer's holder: the task pid containerd knows.
    pub outer_pid: i32,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// The overlay upper dir of the rootfs containerd mounted: the writable layer.
    upperdir: Option<PathBuf>,
    /// Source side of a migration in progress: control requests are refused meanwhile.
    pub outgoing: Option<Outgoing>,
    /// Destination side: the service is restored from a migration instead of started.
    pub incoming: Option<Incoming>,
    /// Destination, post-copy: the restored service's pages still arriving.
    pub pages_in: Option<PagesIn>,
}

impl Container {
    /// Mounts the rootfs containerd passed, starts the outer and creates the service.
    /// On failure everything done so far is undone.
    pub async fn create(req: &CreateTaskRequest) -> Result<Container> {
        let bundle = PathBuf::from(&req.bundle);
        let io_paths = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut c = Container {
            id: req.id.clone(),
            runc: runc_for(&bundle),
            bundle,
            outer_pid: 0,
            init: Process::new("", io_paths, None),
            execs: HashMap::new(),
            upperdir: req.rootfs.iter().find_map(|m| {
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
            }),
            outgoing: None,
            incoming: None,
            pages_in: None,
        };
        match c.setup(req).await {
            Ok(()) => Ok(c),
            Err(e) => {
                c.init.io.close();
                cleanup(&c.bundle).await;
                Err(e)
            }
        }
    }

    async fn setup(&mut self, req: &CreateTaskRequest) -> Result<()> {
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "restoring a task from a containerd checkpoint is not supported by the ums runtime yet".into(),
            ));
        }
        let rootfs_target = self.bundle.join("rootfs");
        for m in &req.rootfs {
            containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs_target).await?;
        }
        let text = tokio::fs::read_to_string(self.bundle.join("config.json"))
            .await
            .map_err(Error::io("read config.json"))?;
        let spec = BundleSpec::parse(&self.bundle, &text)?;
        if !spec.rootfs().is_dir() {
            return Err(Error::InvalidArgument(format!(
                "rootfs {} does not exist or is not a directory",
                spec.rootfs().display()
            )));
        }
        if spec.terminal() != self.init.io_paths.terminal {
            return Err(Error::InvalidArgument(
                "process.terminal in config.json disagrees with the task's terminal flag".into(),
            ));
        }
        let dir = ums_dir(&self.bundle);

        // The outer: the holder in the namespaces and cgroup containerd asked for.
        let outer_dir = dir.join(OUTER);
        holder::install(&outer_dir.join("rootfs"))?;
        write_json(
            &outer_dir.join("config.json"),
            &spec.outer(&self.id, &outer_dir.join("rootfs")),
        )
        .await?;
        let pid_file = outer_dir.join("pid");
        self.outer_pid = self
            .runc
            .create(OUTER, &outer_dir, &pid_file, None, ChildStdio::null())
            .await?;
        self.runc.start(OUTER).await?;

        // The service, nested: joins the outer's namespaces, cgroup below the outer's.
        let svc_dir = dir.join(SERVICE);
        write_json(
            &svc_dir.join("config.json"),
            &spec.service(&self.id, self.outer_pid, &svc_dir.join(CRIU_CONF)),
        )
        .await?;
        if let Some(mid) = spec.annotation(RESTORE_ANNOTATION) {
            if self.init.io_paths.terminal {
                return Err(Error::InvalidArgument(
                    "a task with a terminal cannot be the destination of a migration".into(),
                ));
            }
            info!(
                "created {}: outer pid {}, service awaits migration {mid}",
                self.id, self.outer_pid
            );
            self.incoming = Some(Incoming::new(mid));
            return Ok(());
        }
        let (prepared, io) = ProcessIo::prepare(&self.init.io_paths).await?;
        self.init.io = io.into();
        let pid = self
            .runc
            .create(
                SERVICE,
                &svc_dir,
                &svc_dir.join("pid"),
                prepared.console.as_ref().map(|c| c.path()),
                prepared.child,
            )
            .await?;
        self.init.pid = pid;
        if let Some(console) = prepared.console {
            self.init
                .io
                .attach_console(console, &self.init.io_paths)
                .await?;
        }
        info!(
            "created {}: outer pid {}, service pid {pid}",
            self.id, self.outer_pid
        );
        Ok(())
    }

    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in task {}", self.id)))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = &self.id;
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in task {id}")))
    }

    /// Starts the service (init) or an exec; returns the process's pid.
    pub async fn start(&mut self, exec_id: &str) -> Result<i32> {
        let p = self.process(exec_id)?;
        if p.status() != containerd_shim_protos::api::Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "process {} of task {} is {:?}, not created: cannot start it again",
                if exec_id.is_empty() { "init" } else { exec_id },
                self.id,
                p.status()
            )));
        }
        if exec_id.is_empty() {
            if self.incoming.is_some() {
                return self.restore().await;
            }
            self.runc.start(SERVICE).await?;
            self.init.set_started();
            return Ok(self.init.pid);
        }
        if self.init.status() != containerd_shim_protos::api::Status::RUNNING {
            return Err(Error::FailedPrecondition(format!(
                "task {} is not running: cannot exec in it",
                self.id
            )));
        }
        let dir = ums_dir(&self.bundle);
        let spec_path = dir.join(format!("exec-{exec_id}.json"));
        let p = self.process(exec_id)?;
        write_json(&spec_path, p.spec.as_ref().unwrap_or(&Value::Null)).await?;
        let (prepared, io) = ProcessIo::prepare(&p.io_paths).await?;
        let paths = p.io_paths.clone();
        let res = self
            .runc
            .exec(
                SERVICE,
                &spec_path,
                &dir.join(format!("exec-{exec_id}.pid")),
                prepared.console.as_ref().map(|c| c.path()),
                &dir.join(format!("exec-{exec_id}.log")),
                prepared.child,
            )
            .await;
        let _ = tokio::fs::remove_file(&spec_path).await;
        let pid = match res {
            Ok(pid) => pid,
            Err(e) => {
                io.close();
                return Err(e);
            }
        };
        if let Some(console) = prepared.console {
            io.attach_console(console, &paths).await?;
        }
        let p = self.process_mut(exec_id)?;
        p.io = io.into();
        p.pid = pid;
        p.set_started();
        Ok(pid)
    }

    /// The destination's Start: the images are in (see `Incoming::wait`), restore from them.
    async fn restore(&mut self) -> Result<i32> {
        let Some(incoming) = &self.incoming else {
            return Err(Error::FailedPrecondition(
                "no migration to restore from".into(),
            ));
        };
        incoming.wait().await?;
        let mid = incoming.migration_id.clone();
        let images = incoming.images()?;
        let (prepared, io) = ProcessIo::prepare(&self.init.io_paths).await?;
        let dir = ums_dir(&self.bundle);
        let res = RestoreJob {
            runc: &self.runc,
            images: &images,
            dir: &dir,
            service_bundle: &dir.join(SERVICE),
            upperdir: self.upperdir.as_deref(),
            migration_id: &mid,
            held: incoming.take_held(),
        }
        .run(prepared.child)
        .await;
        let pid = match res {
            Ok((pid, pages_in)) => {
                self.pages_in = pages_in;
                pid
            }
            Err(e) => {
                io.close();
                if let Some(i) = &mut self.incoming {
                    i.phase = "failed";
                }
                return Err(e);
            }
        };
        self.init.io = io.into();
        self.init.pid = pid;
        self.init.set_started();
        self.incoming = None;
        Ok(pid)
    }

    /// Refuses control requests while the service is being migrated away.
    pub fn ensure_not_migrating(&self) -> Result<()> {
        match &self.outgoing {
            Some(m) => Err(Error::FailedPrecondition(format!(
                "task {} is being migrated (migration {}, {}): retry when it has ended",
                self.id,
                m.migration_id,
                m.phase()
            ))),
            None => Ok(()),
        }
    }

    /// Source: marks the migration and hands out what the dump needs (run without the lock).
    pub fn begin_dump(&mut self, migration_id: &str) -> Result<DumpJob> {
        self.ensure_not_migrating()?;
        if self.init.status() != containerd_shim_protos::api::Status::RUNNING {
            return Err(Error::FailedPrecondition(format!(
                "task {} is {:?}: only a running task can be migrated",
                self.id,
                self.init.status()
            )));
        }
        if self.init.io_paths.terminal {
            return Err(Error::FailedPrecondition(format!(
                "task {} has a terminal: it cannot be migrated",
                self.id
            )));
        }
        let progress = criu_sync::Progress::new();
        self.outgoing = Some(Outgoing {
            migration_id: migration_id.to_string(),
            progress: progress.clone(),
            in_flight: None,
        });
        Ok(DumpJob {
            progress,
            runc: self.runc.clone(),
            dir: ums_dir(&self.bundle),
            upperdir: self.upperdir.clone(),
            migration_id: migration_id.to_string(),
        })
    }

    fn outgoing_named(&self, migration_id: &str) -> Result<&Outgoing> {
        self.outgoing
            .as_ref()
            .filter(|m| m.migration_id == migration_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "task {} has no migration {migration_id} in progress",
                    self.id
                ))
            })
    }

    /// Source: the dump ended, with what it left going on if it succeeded, which leaves the
    /// service frozen awaiting Commit or Abort (after the page server's end, post-copy).
    pub fn end_dump(&mut self, migration_id: &str, in_flight: Option<InFlight>) {
        let Some(f) = in_flight else {
            self.outgoing = None;
            return;
        };
        if let Some(m) = self
            .outgoing
            .as_mut()
            .filter(|m| m.migration_id == migration_id)
        {
            m.in_flight = Some(f);
        }
    }

    /// Post-copy: what WaitPages waits for. Source: the page server of `migration_id`;
    /// destination: the restored service's pages.
    pub fn pages(&self, migration_id: &str) -> Result<Pages> {
        if let Some(p) = self
            .pages_in
            .as_ref()
            .filter(|p| p.migration_id == migration_id)
        {
            return Ok(Pages::In(p.clone()));
        }
        self.outgoing_named(migration_id)?
            .serving()
            .cloned()
            .map(Pages::Out)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "migration {migration_id} of task {} is not post-copy",
                    self.id
                ))
            })
    }

    /// Source: the destination runs the service; end it here (SIGKILL, then thaw so it dies).
    pub async fn commit(&mut self, migration_id: &str) -> Result<()> {
        if self.outgoing_named(migration_id)?.phase() != "dumped" {
            return Err(Error::FailedPrecondition(format!(
                "migration {migration_id} of task {} has not finished its dump{}",
                self.id,
                if self.outgoing_named(migration_id)?.serving().is_some() {
                    " (its pages are still being served: WaitPages first)"
                } else {
                    ""
                }
            )));
        }
        // Pre-copy: the restore there read every page, so their stream is ending.
        if let Some(sending) = self.outgoing_named(migration_id)?.sending() {
            if let Err(e) = sending.wait().await {
                warn!(
                    "{}: migration {migration_id}: the pages' stream: {e}",
                    self.id
                );
            }
        }
        // runc's kill --all thaws the cgroup after signalling; resume only if it did not.
        self.runc.kill(SERVICE, libc::SIGKILL as u32, true).await?;
        self.runc.resume_if_paused(SERVICE).await?;
        self.outgoing = None;
        info!(
            "{}: migration {migration_id} committed, service ended here",
            self.id
        );
        Ok(())
    }

    /// Either side: give the migration up. The source resumes its frozen service.
    pub async fn abort(&mut self, migration_id: &str) -> Result<()> {
        if let Some(i) = self
            .incoming
            .as_mut()
            .filter(|i| i.migration_id == migration_id)
        {
            i.abort("aborted by the coordinator");
            return Ok(());
        }
        let out = self.outgoing_named(migration_id)?;
        // Post-copy: end the page server first; pre-copy, the pages' stream, which refers to
        // the frozen memory.
        if let Some(serving) = out.serving().cloned() {
            serving.cancel().await;
        }
        if let Some(sending) = out.sending().cloned() {
            sending.stop().await;
        }
        let out = self.outgoing_named(migration_id)?;
        match out.phase() {
            "dumped" => self.runc.resume(SERVICE).await?,
            "serving" => {
                return Err(Error::FailedPrecondition(format!(
                    "migration {migration_id} of task {}: its page server did not end; the service stays frozen",
                    self.id
                )))
            }
            // While "dumping", the dump itself resumes the service when it fails.
            _ => {}
        }
        self.outgoing = None;
        info!(
            "{}: migration {migration_id} aborted, service resumed",
            self.id
        );
        Ok(())
    }

    pub fn migration_phase(&self, migration_id: &str) -> Option<(&'static str, u64)> {
        if let Some(m) = self
            .outgoing
            .as_ref()
            .filter(|m| m.migration_id == migration_id)
        {
            return Some((m.phase(), m.progress.bytes()));
        }
        self.incoming
            .as_ref()
            .filter(|i| i.migration_id == migration_id)
            .map(|i| (i.phase, i.bytes()))
    }

    /// Destination: listen for the images of `migration_id`, received under `images_dir`
    /// (empty: the bundle's ums dir).
    pub async fn prepare(
        &mut self,
        migration_id: &str,
        listen: &str,
        token: &str,
        max_bytes: u64,
        images_dir: &str,
    ) -> Result<std::net::SocketAddr> {
        let base = if images_dir.is_empty() {
            ums_dir(&self.bundle)
        } else {
            let d = PathBuf::from(images_dir);
            if !d.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "the image dir {images_dir:?} is not an absolute path"
                )));
            }
            tokio::fs::create_dir_all(&d)
                .await
                .map_err(Error::io(format!("create {}", d.display())))?;
            d
        };
        let dir = base.join(format!("in-{migration_id}"));
        let id = self.id.clone();
        let incoming = self
            .incoming
            .as_mut()
            .filter(|i| i.migration_id == migration_id)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "task {id} was not created as the destination of migration {migration_id} (annotation {RESTORE_ANNOTATION})"
                ))
            })?;
        incoming.listen(listen, token, max_bytes, dir).await
    }

    pub fn add_exec(&mut self, exec_id: &str, io_paths: IoPaths, spec: &Any) -> Result<()> {
        self.ensure_not_migrating()?;
        if self.execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {exec_id} already exists in task {}",
                self.id
            )));
        }
        if self.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "task {} has exited: cannot exec in it",
                self.id
            )));
        }
        let spec = crate::spec::parse_process(&spec.value)?;
        self.execs.insert(
            exec_id.to_string(),
            Process::new(exec_id, io_paths, Some(spec)),
        );
        Ok(())
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        self.ensure_not_migrating()?;
        let p = self.process(exec_id)?;
        if p.exited().is_some() {
            return Err(Error::NotFound(format!(
                "process {} of task {} already finished",
                if exec_id.is_empty() { "init" } else { exec_id },
                self.id
            )));
        }
        if exec_id.is_empty() {
            return self.runc.kill(SERVICE, signal, all).await;
        }
        if p.pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {exec_id} of task {} has not been started",
                self.id
            )));
        }
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("invalid signal {signal}")))?;
        nix::sys::signal::kill(Pid::from_raw(p.pid), sig)?;
        Ok(())
    }

    /// Kills the outer holder (the service is gone, or must go).
    pub fn kill_outer(&self) {
        if self.outer_pid > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.outer_pid), Signal::SIGKILL);
        }
    }

    pub async fn pause(&mut self) -> Result<()> {
        self.ensure_not_migrating()?;
        self.runc.pause(SERVICE).await?;
        self.init.set_paused(true);
        Ok(())
    }

    pub async fn resume(&mut self) -> Result<()> {
        self.ensure_not_migrating()?;
        self.runc.resume(SERVICE).await?;
        self.init.set_paused(false);
        Ok(())
    }

    pub async fn pids(&self) -> Result<Vec<i32>> {
        self.runc.ps(SERVICE).await
    }

    pub async fn stats(&self) -> Result<Any> {
        let events = self.runc.stats(OUTER).await?;
        metrics::to_any(&events, metrics::unified_only())
    }

    /// Applies new limits to the outer's cgroup; the service's lies below it.
    pub async fn update(&self, resources: &Any) -> Result<()> {
        self.ensure_not_migrating()?;
        let value: Value = serde_json::from_slice(&resources.value)
            .map_err(|e| Error::InvalidArgument(format!("invalid resources: {e}")))?;
        let path = ums_dir(&self.bundle).join("update.json");
        write_json(&path, &value).await?;
        let res = self.runc.update(OUTER, &path).await;
        let _ = tokio::fs::remove_file(&path).await;
        res
    }

    /// Checkpoints the service only; the outer keeps running.
    pub async fn checkpoint(&self, mut opts: CheckpointOpts) -> Result<()> {
        self.ensure_not_migrating()?;
        // CRIU's defaults (a migration's settings must not outlive it, e.g. after a crash).
        let _ = tokio::fs::remove_file(ums_dir(&self.bundle).join(SERVICE).join(CRIU_CONF)).await;
        if opts.work_path.as_os_str().is_empty() {
            opts.work_path = ums_dir(&self.bundle).join("criu-work");
        }
        tokio::fs::create_dir_all(&opts.work_path)
            .await
            .map_err(Error::io("create CRIU work dir"))?;
        tokio::fs::create_dir_all(&opts.image_path)
            .await
            .map_err(Error::io("create checkpoint image dir"))?;
        self.runc.checkpoint(SERVICE, &opts).await
    }

    /// Removes both runc containers, the rootfs mount and the shim's files of the bundle.
    pub async fn destroy(&mut self) {
        if let Some(i) = &mut self.incoming {
            i.abort("task deleted");
            // Images received outside the bundle do not go with it.
            if let Ok(images) = i.images() {
                for d in received_dirs(&images) {
                    if let Err(e) = tokio::fs::remove_dir_all(&d).await {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            warn!("remove {}: {e}", d.display());
                        }
                    }
                }
            }
        }
        self.init.io.close();
        for p in self.execs.values() {
            p.io.close();
        }
        cleanup(&self.bundle).await;
    }
}

/// Undoes everything the shim may have made for a bundle; safe to call more than once and
/// from `containerd-shim-ums-v1 delete` when the shim process is gone.
pub async fn cleanup(bundle: &Path) {
    let runc = runc_for(bundle);
    if runc.root().exists() {
        for id in [SERVICE, OUTER] {
            if let Err(e) = runc.delete(id, true).await {
                if !e.to_string().contains("does not exist") {
                    warn!("runc delete {id} in {}: {e}", bundle.display());
                }
            }
        }
    }
    let rootfs = bundle.join("rootfs");
    let target = rootfs.to_string_lossy().into_owned();
    let res =
        tokio::task::spawn_blocking(move || umount_recursive(Some(&target), libc::MNT_DETACH))
            .await;
    if let Ok(Err(e)) = res {
        warn!("unmount {}: {e}", rootfs.display());
    }
    crate::migration_service::remove_stale_socket(&ums_dir(bundle).join("migration.address"));
    if let Err(e) = tokio::fs::remove_dir_all(ums_dir(bundle)).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("remove {}: {e}", ums_dir(bundle).display());
        }
    }
}

async fn write_json(path: &Path, value: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::io(format!("create {}", dir.display())))?;
    }
    let bytes = serde_json::to_vec(value).map_err(Error::json("encode json"))?;
    tokio::fs::write(path, bytes)
        .await
        .map_err(Error::io(format!("write {}", path.display())))
}
