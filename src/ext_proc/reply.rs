//! The replies mulligan sends Envoy, one constructor per kind.

use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse,
    CommonResponse, HeadersResponse, HttpBody, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse,
};

fn wrap(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

/// Headers phase: carry on unchanged.
pub fn continue_request_headers() -> ProcessingResponse {
    wrap(Response::RequestHeaders(HeadersResponse::default()))
}

pub fn continue_response_headers() -> ProcessingResponse {
    wrap(Response::ResponseHeaders(HeadersResponse::default()))
}

/// Body chunk in a mode where Envoy keeps the body (STREAMED, BUFFERED,
/// BUFFERED_PARTIAL): carry on unchanged.
pub fn continue_body(request_path: bool) -> ProcessingResponse {
    let body = BodyResponse::default();
    wrap(if request_path {
        Response::RequestBody(body)
    } else {
        Response::ResponseBody(body)
    })
}

/// Body chunk in FULL_DUPLEX_STREAMED or GRPC mode: Envoy has handed the
/// bytes over and forwards only what comes back, so the chunk is returned as
/// it came (moved, not copied).
pub fn echo_body(request_path: bool, chunk: HttpBody) -> ProcessingResponse {
    let streamed = StreamedBodyResponse {
        body: chunk.body,
        end_of_stream: chunk.end_of_stream,
        end_of_stream_without_message: chunk.end_of_stream_without_message,
        grpc_message_compressed: chunk.grpc_message_compressed,
        drain_complete: false,
    };
    let body = BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::StreamedResponse(streamed)),
            }),
            ..Default::default()
        }),
    };
    wrap(if request_path {
        Response::RequestBody(body)
    } else {
        Response::ResponseBody(body)
    })
}

/// Trailers: carry on unchanged.
pub fn continue_trailers(request_path: bool) -> ProcessingResponse {
    let trailers = TrailersResponse::default();
    wrap(if request_path {
        Response::RequestTrailers(trailers)
    } else {
        Response::ResponseTrailers(trailers)
    })
}
