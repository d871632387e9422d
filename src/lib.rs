//! utsuwa's command-line side that tests share: the default guest's assets,
//! the management API (server, client, documents) and the logger it
//! configures. The machine itself is the `vmm` crate.

pub mod api;
pub mod assets;
pub mod logger;
