//! Decoding of pushes: the packets a connection receives that are not replies to its
//! requests.

use im_proto::v1::{Kicked, Message, Notice, Packet, PacketType};
use prost::Message as _;

/// A push, decoded by its packet type.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// MESSAGE: a message the user received, or one the user sent from another device.
    Message(Message),
    /// KICKED: the device signed in on another connection; the server closes this one next.
    Kicked(Kicked),
    /// NOTICE: the user's friends or groups changed. Reload the list it names. A notice is
    /// not stored, so it is no record of the state.
    Notice(Notice),
    /// ERROR: the engine could not tell which request failed, for example because a message
    /// was not a `Packet`.
    Error {
        /// The `ErrorCode` number.
        code: i32,
        /// The server's explanation.
        message: String,
    },
    /// Any other packet: a reply that arrived after its request gave up, an error reply to a
    /// packet that gets no reply on success (MESSAGE_ACK), or a type this client does not
    /// know.
    Other(Packet),
}

impl Push {
    /// Decodes `packet` by its type.
    ///
    /// # Errors
    ///
    /// The decode error when a MESSAGE, KICKED or NOTICE packet's `data` does not decode as its
    /// type.
    pub fn decode(packet: Packet) -> Result<Push, prost::DecodeError> {
        if packet.request_id != 0 {
            return Ok(Push::Other(packet));
        }
        match PacketType::try_from(packet.r#type) {
            Ok(PacketType::Message) => Ok(Push::Message(Message::decode(packet.data)?)),
            Ok(PacketType::Kicked) => Ok(Push::Kicked(Kicked::decode(packet.data)?)),
            Ok(PacketType::Notice) => Ok(Push::Notice(Notice::decode(packet.data)?)),
            Ok(PacketType::Error) => Ok(Push::Error {
                code: packet.code,
                message: packet.message,
            }),
            _ => Ok(Push::Other(packet)),
        }
    }
}

#[cfg(test)]
mod tests {
    use im_proto::v1::{ErrorCode, KickReason, NoticeKind};

    use super::*;

    fn packet(ty: PacketType, request_id: u64, data: Vec<u8>) -> Packet {
        Packet {
            r#type: ty as i32,
            request_id,
            data: data.into(),
            ..Packet::default()
        }
    }

    #[test]
    fn message_push_decodes() {
        let message = Message {
            seq: 4,
            message_id: 99,
            content: b"hi".to_vec().into(),
            ..Message::default()
        };

        let push = Push::decode(packet(PacketType::Message, 0, message.encode_to_vec()));

        assert_eq!(push, Ok(Push::Message(message)));
    }

    #[test]
    fn kicked_push_decodes() {
        let kicked = Kicked {
            reason: KickReason::SignedInElsewhere as i32,
            message: "elsewhere".into(),
        };

        let push = Push::decode(packet(PacketType::Kicked, 0, kicked.encode_to_vec()));

        assert_eq!(push, Ok(Push::Kicked(kicked)));
    }

    #[test]
    fn notice_push_decodes() {
        let notice = Notice {
            kind: NoticeKind::GroupMembersAdded as i32,
            actor_user_id: 3,
            group_id: 40,
            member_ids: vec![5, 6],
            at_ms: 1_700_000_000_000,
            ..Notice::default()
        };

        let push = Push::decode(packet(PacketType::Notice, 0, notice.encode_to_vec()));

        assert_eq!(push, Ok(Push::Notice(notice)));
    }

    #[test]
    fn error_push_keeps_code_and_text() {
        let mut error = packet(PacketType::Error, 0, Vec::new());
        error.code = ErrorCode::InvalidPacket as i32;
        error.message = "not a Packet".into();

        let push = Push::decode(error);

        assert_eq!(
            push,
            Ok(Push::Error {
                code: ErrorCode::InvalidPacket as i32,
                message: "not a Packet".into()
            })
        );
    }

    #[test]
    fn late_reply_is_other() {
        let late = packet(PacketType::Message, 12, Vec::new());

        let push = Push::decode(late.clone());

        assert_eq!(push, Ok(Push::Other(late)));
    }

    #[test]
    fn undecodable_message_is_error() {
        // 0xff 0xff starts a varint that never ends.
        let push = Push::decode(packet(PacketType::Message, 0, vec![0xff, 0xff]));

        assert!(push.is_err());
    }
}
