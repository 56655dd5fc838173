//! Fuzzes the protobuf decoding of client packets: decodes arbitrary bytes as a `Packet` and as
//! each request message, and for a packet also decodes `data` as the message its type names,
//! as the engine does. Whatever decodes must re-encode to bytes that decode to the same value.

#![no_main]

use bytes::Bytes;
use im_proto::v1::{
    LoginRequest, MessageAck, Packet, PacketType, RegisterRequest, SendRequest, SignInRequest,
    SyncRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    if let Some(packet) = round_trip::<Packet>(data.clone()) {
        round_trip_data(&packet);
    }
    round_trip::<RegisterRequest>(data.clone());
    round_trip::<LoginRequest>(data.clone());
    round_trip::<SignInRequest>(data.clone());
    round_trip::<SendRequest>(data.clone());
    round_trip::<SyncRequest>(data.clone());
    round_trip::<MessageAck>(data);
});

/// Decodes `data` as `M`, and if that works checks that the value re-encodes to `encoded_len`
/// bytes that decode to the same value and encode to the same bytes again.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: Bytes) -> Option<M> {
    let decoded = M::decode(data).ok()?;
    let encoded = Bytes::from(decoded.encode_to_vec());
    assert_eq!(encoded.len(), decoded.encoded_len());

    let again = M::decode(encoded.clone()).expect("re-encoded message decodes");
    assert_eq!(again, decoded);
    assert_eq!(again.encode_to_vec(), encoded);
    Some(decoded)
}

/// Decodes `packet.data` as the request message of the packet's type.
fn round_trip_data(packet: &Packet) {
    let data = packet.data.clone();
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::Register) => {
            round_trip::<RegisterRequest>(data);
        }
        Ok(PacketType::Login) => {
            round_trip::<LoginRequest>(data);
        }
        Ok(PacketType::SignIn) => {
            round_trip::<SignInRequest>(data);
        }
        Ok(PacketType::Send) => {
            round_trip::<SendRequest>(data);
        }
        Ok(PacketType::Sync) => {
            round_trip::<SyncRequest>(data);
        }
        Ok(PacketType::MessageAck) => {
            round_trip::<MessageAck>(data);
        }
        _ => {}
    }
}
