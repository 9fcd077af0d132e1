//! containerd-shim-ums-v1: containerd starts it as `start`, `delete` or the shim server.
#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<ums_shim::UmsShim>(ums_shim::RUNTIME_TYPE, None).await;
}
