//! The protobuf codec, with per-call buffers sized to the message. tonic's default reserves
//! 8 KiB per call and keeps it for the call's life; a gateway holding ten thousand WatchCopy
//! streams whose events are ~280 bytes would keep ~80 MB in those buffers alone. Here a buffer
//! starts empty and each message reserves exactly its encoded length before it is encoded, so
//! a stream holds no more than its last event, and a large answer (a page of 500 copies) is
//! allocated once instead of grown by doubling.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Initial decode buffer per call (requests are a few hundred bytes; it grows when one is not).
const DECODE_BUFFER_SIZE: usize = 512;
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
    type Encoder = SnapgateEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SnapgateEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(DECODE_BUFFER_SIZE, YIELD_THRESHOLD))
    }
}

/// Encodes a message into exactly the room it needs.
#[derive(Debug)]
pub struct SnapgateEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SnapgateEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|error| Status::internal(format!("encoding a response: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(0, YIELD_THRESHOLD)
    }
}
