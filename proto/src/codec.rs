//! The codec of every generated client and server: prost's, with two rules
//! for what a server decodes.
//!
//! - A request that is not a valid message is the caller's error:
//!   `InvalidArgument` (prost's codec says `Internal`, as if the server
//!   had failed).
//! - Every method of this API takes exactly one request message. tonic
//!   reads the first and silently drops any more (in gRPC or gRPC-web):
//!   here a second one is refused with `InvalidArgument`, so a client
//!   cannot make the server decode what it then ignores.
//!
//! What a client decodes (answers, streams of them) is decoded as prost
//! does. Which messages are requests is known from the services, when the
//! `.proto` files are compiled (`build.rs` implements [`Direction`]).

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Whether a message is a method's request (decoded by servers) or only
/// an answer (decoded by clients).
pub trait Direction {
    const REQUEST: bool;
}

/// prost's codec, with a server's rules for requests (see the module).
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Direction + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder {
            inner: ProstDecoder::new(BufferSettings::default()),
            decoded: false,
        }
    }
}

/// Decodes `U`; for a request, once, and its errors are the caller's.
#[derive(Debug)]
pub struct Decoder<U> {
    inner: ProstDecoder<U>,
    /// Whether a message was decoded already.
    decoded: bool,
}

impl<U: prost::Message + Default + Direction> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if !U::REQUEST {
            return self.inner.decode(buf);
        }
        if self.decoded {
            return Err(Status::invalid_argument(
                "this call takes one request message, and more were sent",
            ));
        }
        self.decoded = true;
        self.inner.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the request is not a valid message: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
