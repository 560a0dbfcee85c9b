//! The hook messages declared by hand match Envoy Gateway's vendored proto.

use super::*;

/// Every message of the vendored `envoygateway.extension` package, with all
/// its fields set, decodes into the hand-declared Rust type and encodes back
/// to the same message: same field numbers, same types, nothing dropped.
pub fn wire_format_matches_vendored_proto() {
    use mulligan::extension::api as a;
    use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
    fn roundtrip<M: Message + Default>(bytes: &[u8]) -> Vec<u8> {
        M::decode(bytes).expect("decode").encode_to_vec()
    }
    let pool = crate::xds::pool();
    type Check = (&'static str, fn(&[u8]) -> Vec<u8>);
    let checks: Vec<Check> = vec![
        ("ExtensionResource", roundtrip::<a::ExtensionResource>),
        (
            "PostRouteExtensionContext",
            roundtrip::<a::PostRouteExtensionContext>,
        ),
        (
            "PostVirtualHostExtensionContext",
            roundtrip::<a::PostVirtualHostExtensionContext>,
        ),
        (
            "PostClusterExtensionContext",
            roundtrip::<a::PostClusterExtensionContext>,
        ),
        (
            "PostEndpointsExtensionContext",
            roundtrip::<a::PostEndpointsExtensionContext>,
        ),
        (
            "PostHTTPListenerExtensionContext",
            roundtrip::<a::PostHTTPListenerExtensionContext>,
        ),
        (
            "PostTranslateExtensionContext",
            roundtrip::<a::PostTranslateExtensionContext>,
        ),
        (
            "PostRouteModifyRequest",
            roundtrip::<a::PostRouteModifyRequest>,
        ),
        (
            "PostRouteModifyResponse",
            roundtrip::<a::PostRouteModifyResponse>,
        ),
        (
            "PostClusterModifyRequest",
            roundtrip::<a::PostClusterModifyRequest>,
        ),
        (
            "PostClusterModifyResponse",
            roundtrip::<a::PostClusterModifyResponse>,
        ),
        (
            "PostEndpointsModifyRequest",
            roundtrip::<a::PostEndpointsModifyRequest>,
        ),
        (
            "PostEndpointsModifyResponse",
            roundtrip::<a::PostEndpointsModifyResponse>,
        ),
        (
            "PostVirtualHostModifyRequest",
            roundtrip::<a::PostVirtualHostModifyRequest>,
        ),
        (
            "PostVirtualHostModifyResponse",
            roundtrip::<a::PostVirtualHostModifyResponse>,
        ),
        (
            "PostHTTPListenerModifyRequest",
            roundtrip::<a::PostHTTPListenerModifyRequest>,
        ),
        (
            "PostHTTPListenerModifyResponse",
            roundtrip::<a::PostHTTPListenerModifyResponse>,
        ),
        (
            "PostTranslateModifyRequest",
            roundtrip::<a::PostTranslateModifyRequest>,
        ),
        (
            "PostTranslateModifyResponse",
            roundtrip::<a::PostTranslateModifyResponse>,
        ),
    ];
    // The server's byte-keeping twins, too.
    let raw_checks: Vec<Check> = vec![
        (
            "PostRouteModifyRequest",
            roundtrip::<a::raw::PostRouteModifyRequest>,
        ),
        (
            "PostRouteModifyResponse",
            roundtrip::<a::raw::PostRouteModifyResponse>,
        ),
        (
            "PostClusterModifyRequest",
            roundtrip::<a::raw::PostClusterModifyRequest>,
        ),
        (
            "PostClusterModifyResponse",
            roundtrip::<a::raw::PostClusterModifyResponse>,
        ),
        (
            "PostEndpointsModifyRequest",
            roundtrip::<a::raw::PostEndpointsModifyRequest>,
        ),
        (
            "PostEndpointsModifyResponse",
            roundtrip::<a::raw::PostEndpointsModifyResponse>,
        ),
        (
            "PostVirtualHostModifyRequest",
            roundtrip::<a::raw::PostVirtualHostModifyRequest>,
        ),
        (
            "PostVirtualHostModifyResponse",
            roundtrip::<a::raw::PostVirtualHostModifyResponse>,
        ),
        (
            "PostHTTPListenerModifyRequest",
            roundtrip::<a::raw::PostHTTPListenerModifyRequest>,
        ),
        (
            "PostHTTPListenerModifyResponse",
            roundtrip::<a::raw::PostHTTPListenerModifyResponse>,
        ),
        (
            "PostTranslateModifyRequest",
            roundtrip::<a::raw::PostTranslateModifyRequest>,
        ),
        (
            "PostTranslateModifyResponse",
            roundtrip::<a::raw::PostTranslateModifyResponse>,
        ),
    ];
    let in_package = pool
        .all_messages()
        .filter(|m| m.package_name() == "envoygateway.extension")
        .count();
    assert_eq!(
        in_package,
        checks.len(),
        "every vendored message has a Rust twin"
    );
    let service = pool
        .get_service_by_name("envoygateway.extension.EnvoyGatewayExtension")
        .expect("service");
    assert_eq!(service.methods().count(), 6);
    for (name, check) in checks.into_iter().chain(raw_checks) {
        let desc = pool
            .get_message_by_name(&format!("envoygateway.extension.{name}"))
            .expect("message");
        let mut msg = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            let one = match field.kind() {
                Kind::Message(m) => {
                    // A nested message with a named field set, so it is not empty.
                    let mut inner = DynamicMessage::new(m.clone());
                    if let Some(f) = m
                        .fields()
                        .find(|f| f.kind() == Kind::String && !f.is_list())
                    {
                        inner.set_field(&f, Value::String(format!("{name}.{}", field.name())));
                    }
                    Value::Message(inner)
                }
                Kind::String => Value::String(field.name().to_string()),
                Kind::Bytes => Value::Bytes(field.name().as_bytes().to_vec().into()),
                other => panic!("{name}.{}: unexpected kind {other:?}", field.name()),
            };
            let value = if field.is_list() {
                Value::List(vec![one.clone(), one])
            } else {
                one
            };
            msg.set_field(&field, value);
        }
        let bytes = msg.encode_to_vec();
        let back = DynamicMessage::decode(desc, check(&bytes).as_slice()).expect("decode back");
        assert_eq!(back, msg, "{name}: the Rust type lost or changed a field");
        let _ = msg.descriptor();
    }
}
