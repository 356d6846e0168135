//! What an async caller hands to a file device's I/O thread(s), and how the answer comes back.
//!
//! The buffer travels inside the request, so whichever thread performs the I/O owns it for as
//! long as the kernel may touch it. That is what makes cancellation safe: if the caller's future
//! is dropped, only the reply channel dies; the buffer lives on until the I/O completes.

use crate::backend::{BackendError, IoResult};
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

pub(crate) enum Request {
    Read {
        offset: u64,
        buf: BytesMut,
        reply: oneshot::Sender<IoResult<BytesMut>>,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
        reply: oneshot::Sender<IoResult<()>>,
    },
    Flush {
        reply: oneshot::Sender<IoResult<()>>,
    },
}

/// Waits for a reply; a reply channel dropped unanswered means the I/O thread is gone.
pub(crate) async fn answer<T>(rx: oneshot::Receiver<IoResult<T>>) -> IoResult<T> {
    rx.await.unwrap_or(Err(BackendError::Closed))
}
