//! The codec of every recsys service and client: prost's
//! ([`tonic_prost::ProstCodec`]), except for what an undecodable message is
//! answered with.
//!
//! tonic-prost maps every protobuf decode error to `INTERNAL`, following the
//! gRPC status code table for a peer's malformed bytes. On a server that blames
//! the server for the caller's bytes: a random or bit-flipped request would read
//! as a server bug and count against its error rate. So a message a server
//! receives (a request) that does not decode is `INVALID_ARGUMENT`, naming the
//! message and prost's reason, while a message a client receives (an answer)
//! that does not decode stays `INTERNAL`: there the peer is at fault. Which is
//! which is a property of the message type ([`DecodeBlame`]), since tonic builds
//! one codec type for both sides (`tonic_prost_build`'s `codec_path`, set in
//! `build.rs`).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::v1::{
    CatalogChangeResponse, DeleteItemsRequest, GetItemVectorRequest, GetItemVectorResponse,
    InfoRequest, InfoResponse, RankRequest, RankResponse, RecommendRequest, RecommendResponse,
    RecommendStreamResponse, SearchRequest, SearchResponse, UpsertItemsRequest, VersionInfo,
};

/// Who is to blame when a message of this type does not decode, as a gRPC code.
pub trait DecodeBlame {
    /// The status code of a decode failure.
    const CODE: Code;
    /// The message's name, for the status message.
    const NAME: &'static str;
}

macro_rules! blame {
    ($code:expr => $($message:ident),+) => {
        $(impl DecodeBlame for $message {
            const CODE: Code = $code;
            const NAME: &'static str = stringify!($message);
        })+
    };
}

// Requests are decoded by servers: bad bytes are the caller's.
blame!(Code::InvalidArgument => RecommendRequest, SearchRequest, InfoRequest, RankRequest, UpsertItemsRequest, DeleteItemsRequest, GetItemVectorRequest);
// Answers are decoded by clients: bad bytes are the server's.
blame!(Code::Internal => RecommendResponse, RecommendStreamResponse, SearchResponse, InfoResponse, VersionInfo, RankResponse, CatalogChangeResponse, GetItemVectorResponse);

/// [`ProstCodec`] with decode errors mapped by [`DecodeBlame`].
#[derive(Debug, Clone)]
pub struct RecsysCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for RecsysCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for RecsysCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeBlame + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RecsysDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RecsysDecoder {
            inner: ProstCodec::<T, U>::default().decoder(),
        }
    }
}

/// [`ProstDecoder`] whose errors carry `U`'s [`DecodeBlame`] code.
#[derive(Debug, Clone)]
pub struct RecsysDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + DecodeBlame> Decoder for RecsysDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            Status::new(
                U::CODE,
                format!("{} does not decode: {}", U::NAME, status.message()),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
