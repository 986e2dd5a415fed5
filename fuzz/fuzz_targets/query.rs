//! The emulator's query endpoint on arbitrary input: the first byte picks how the request
//! arrives (a form body or a query string, signed by header or presigned in the query), the
//! rest is the request's text. Whatever it is, the emulator answers (an AWS error or a
//! result) and never panics; a panic or a sanitizer report is the finding.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// A well-formed SigV4 Authorization header, so requests reach the action's parameters.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/rds/aws4_request, \
SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    let Some((&how, text)) = data.split_first() else { return };
    let Ok(emulator) = snapgate_emulator::Emulator::new(snapgate_emulator::EmulatorConfig {
        seed: true,
        ..Default::default()
    }) else {
        return;
    };
    let text = String::from_utf8_lossy(text).into_owned();
    let request = match how % 3 {
        0 => Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", AUTHORIZATION)
            .header("x-amz-date", "20260101T000000Z")
            .body(Body::from(text)),
        1 => Request::get(format!("/?{}", text.replace(' ', "%20").replace('#', "%23")))
            .header("authorization", AUTHORIZATION)
            .body(Body::empty()),
        _ => Request::post("/").header("content-type", "application/x-www-form-urlencoded").body(Body::from(text)),
    };
    let Ok(request) = request else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build();
    let Ok(runtime) = runtime else { return };
    let Ok(response) = runtime.block_on(emulator.router().oneshot(request));
    // An answer, whatever it is; a 500 only when a fault was injected (none are here).
    assert_ne!(response.status().as_u16(), 500, "an uninjected internal error");
});
