//! Tests of the vsock device.
