//! The protobuf codec with smaller per-call buffers. tonic's default reserves 8 KiB per call
//! for encoding; a gateway holding ten thousand WatchCopy streams whose events are a few
//! hundred bytes would keep ~80 MB in those buffers alone. They still grow when a message
//! needs more.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer per call: a WatchCopy event is about 280 bytes with its framing,
/// so one fits, and the buffer is reused for the next once the last has been written.
const BUFFER_SIZE: usize = 512;
/// Encoded bytes after which a streaming response yields to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug)]
pub struct SnapgateCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SnapgateCodec<T, U> {
    fn default() -> Self {
        SnapgateCodec(PhantomData)
    }
}

impl<T, U> Codec for SnapgateCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
