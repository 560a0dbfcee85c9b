//! The replies mulligan sends Envoy, one constructor per kind.

use std::time::Duration;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
        },
        extensions::filters::http::ext_proc::v3::ProcessingMode,
        r#type::v3::{HttpStatus, StatusCode},
        service::ext_proc::v3::{
            body_mutation::Mutation as BodyChange, processing_response::Response, BodyMutation,
            BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
            ImmediateResponse, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
        },
    },
    google::protobuf,
};

use crate::replay::{hop_by_hop, Replayed};

fn wrap(response: Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

/// Header changes to make on the request.
#[derive(Debug, Default)]
pub struct Mutation {
    set: Vec<HeaderValueOption>,
    remove: Vec<String>,
}

impl Mutation {
    /// Sets `key` to `value`, replacing whatever the client sent.
    pub(crate) fn set(&mut self, key: &str, value: String) {
        self.set.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: key.to_string(),
                value: String::new(),
                raw_value: value.into_bytes(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        });
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.remove.push(key.to_string());
    }

    fn into_common(self) -> Option<CommonResponse> {
        if self.set.is_empty() && self.remove.is_empty() {
            return None;
        }
        Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: self.set,
                remove_headers: self.remove,
            }),
            ..Default::default()
        })
    }
}

/// Request headers: carry on, with `mutation` applied; optionally change how
/// the rest of this request is processed (send its small body so it can be
/// replayed, skip or ask for the response phase).
pub(crate) fn continue_request_headers(
    mode_override: Option<ProcessingMode>,
    mutation: Mutation,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: mutation.into_common(),
        })),
        mode_override,
        ..Default::default()
    }
}

pub(crate) fn continue_response_headers() -> ProcessingResponse {
    wrap(Response::ResponseHeaders(HeadersResponse::default()))
}

/// The original response goes through, with `Retry-After` set: the
/// request was held for a ready endpoint until its deadline.
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
/// (a rescue takes longer than the default message timeout).
pub(crate) fn extend_timeout(timeout: Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(protobuf::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: timeout.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

/// The rescued response, replacing the failed one. `None` when Envoy could
/// not carry its status (not a code Envoy's `StatusCode` enum defines).
pub(crate) fn immediate(r: Replayed) -> Option<ProcessingResponse> {
    let code = StatusCode::try_from(i32::from(r.status)).ok()?;
    let mut set_headers = Vec::with_capacity(r.headers.len());
    let mut last: Option<&http::HeaderName> = None;
    for (name, value) in &r.headers {
        if hop_by_hop(name.as_str()) || name == http::header::CONTENT_LENGTH {
            continue;
        }
        // The first value of a name replaces what Envoy's local reply had;
        // later values of the same name are appended (e.g. set-cookie).
        let action = if last == Some(name) {
            HeaderAppendAction::AppendIfExistsOrAdd
        } else {
            HeaderAppendAction::OverwriteIfExistsOrAdd
        };
        last = Some(name);
        set_headers.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: name.as_str().to_string(),
                value: String::new(),
                raw_value: value.as_bytes().to_vec(),
            }),
            append_action: action as i32,
            ..Default::default()
        });
    }
    Some(wrap(Response::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: code as i32 }),
        headers: Some(HeaderMutation {
            set_headers,
            remove_headers: Vec::new(),
        }),
        body: r.body.to_vec(),
        grpc_status: None,
        details: "mulligan_rescued".into(),
    })))
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
