//! A gRPC client that sends any bytes as a message to any method: what the
//! bad-input tests use to send random, bit-flipped and truncated messages and
//! calls to methods no service has, which the generated clients cannot.

use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Sends and receives message bodies as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// One unary call of `path` (`/package.Service/Method`) with `body` as the message.
pub async fn call(channel: &Channel, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let (mut grpc, path) = ready(channel, path).await?;
    grpc.unary(Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// One call of the unary method `path` whose request body ends without a
/// message (the headers, then the end of the stream): what a client that gives
/// up before sending, or a broken one, leaves a server with.
pub async fn call_without_message(channel: &Channel, path: &str) -> Result<Vec<u8>, Status> {
    let (mut grpc, path) = ready(channel, path).await?;
    grpc.client_streaming(
        Request::new(tokio_stream::empty::<Vec<u8>>()),
        path,
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A client on `channel` ready for a call, and `path` as a request path.
async fn ready(
    channel: &Channel,
    path: &str,
) -> Result<(tonic::client::Grpc<Channel>, PathAndQuery), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(path.to_string())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((grpc, path))
}
