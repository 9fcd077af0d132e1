//! Publishes task events to containerd, in order, through containerd-shim's queue.
use containerd_shim::{event::Event, publisher::RemotePublisher};
use containerd_shim_protos::ttrpc::context::Context;
use log::warn;

pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Events {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    pub async fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(e) = self
            .publisher
            .publish(Context::default(), &topic, &self.namespace, Box::new(event))
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }
}
