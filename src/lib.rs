//! utsuwa's command-line side that tests share: the default guest's assets.
//! The machine itself is the `vmm` crate.

pub mod assets;
