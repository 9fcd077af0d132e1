//! containerd-shim-ums-v1: containerd starts it as `start`, `delete` or the shim server.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    containerd_shim::asynchronous::run::<ums_shim::UmsShim>(ums_shim::RUNTIME_TYPE, None).await;
    let _ = std::fs::remove_file(ums_shim::migration_service::socket_path());
    // Served and shut down: exit now rather than wait for blocking threads (a stdin fifo
    // whose client never came) when the runtime is dropped.
    std::process::exit(0);
}
