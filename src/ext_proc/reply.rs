//! The replies mulligan sends Envoy, one constructor per kind.

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
        },
        r#type::v3::{HttpStatus, StatusCode},
        service::ext_proc::v3::{
            body_mutation::Mutation as BodyChange, processing_response::Response, BodyMutation,
            BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
            ImmediateResponse, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
        },
    },
    google::protobuf,
};

fn wrap(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

/// Request headers: carry on unchanged.
pub(crate) fn continue_request_headers() -> ProcessingResponse {
    wrap(Response::RequestHeaders(HeadersResponse::default()))
}

pub(crate) fn continue_response_headers() -> ProcessingResponse {
    wrap(Response::ResponseHeaders(HeadersResponse::default()))
}

/// The failed response goes through, with `Retry-After` set: no endpoint
/// could serve the request in time.
pub(crate) fn continue_with_retry_after(seconds: u32) -> ProcessingResponse {
    continue_setting("retry-after", seconds.to_string())
}

/// The response goes through with header `key` set to `value` (replacing
/// any value it had).
pub(crate) fn continue_setting(key: &str, value: String) -> ProcessingResponse {
    let set = HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.into_bytes(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    wrap(Response::ResponseHeaders(HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![set],
                remove_headers: Vec::new(),
            }),
            ..Default::default()
        }),
    }))
}

/// Asks Envoy to wait up to `timeout` for the next reply on this stream
/// (a hold takes longer than the default message timeout).
pub(crate) fn extend_timeout(timeout: Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(protobuf::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: timeout.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

/// A local 503 instead of sending the request on (the gate stopping a
/// retry that could run a request twice).
pub(crate) fn refuse(body: &str, details: &str) -> ProcessingResponse {
    wrap(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: StatusCode::ServiceUnavailable as i32,
        }),
        headers: None,
        body: body.as_bytes().to_vec(),
        grpc_status: None,
        details: details.into(),
    }))
}

/// Body chunk in a mode where Envoy keeps the body (STREAMED, BUFFERED,
/// BUFFERED_PARTIAL): carry on unchanged.
pub(crate) fn continue_body(request_path: bool) -> ProcessingResponse {
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
pub(crate) fn echo_body(request_path: bool, chunk: HttpBody) -> ProcessingResponse {
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
                mutation: Some(BodyChange::StreamedResponse(streamed)),
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
pub(crate) fn continue_trailers(request_path: bool) -> ProcessingResponse {
    let trailers = TrailersResponse::default();
    wrap(if request_path {
        Response::RequestTrailers(trailers)
    } else {
        Response::ResponseTrailers(trailers)
    })
}
