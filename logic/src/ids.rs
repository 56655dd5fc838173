//! Id newtypes and the connection reference that an online status names.
//!
//! The wire carries ids as `uint64`; PostgreSQL stores them as `bigint`, so ids above
//! `i64::MAX` cannot exist in the database.

use std::fmt;

use crate::error::LogicError;

/// Maximum length of an engine node address in a [`ConnRef`], in bytes.
pub const NODE_MAX_BYTES: usize = 255;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl $name {
            /// Returns the id as a PostgreSQL `bigint`, or `None` when it is above `i64::MAX`
            /// and so cannot be stored.
            pub fn to_sql(self) -> Option<i64> {
                i64::try_from(self.0).ok()
            }

            /// Converts a `bigint` read from PostgreSQL.
            ///
            /// # Errors
            ///
            /// [`LogicError::Internal`] for a negative value, which an identity column never
            /// produces.
            pub fn from_sql(value: i64) -> Result<Self, LogicError> {
                u64::try_from(value)
                    .map($name)
                    .map_err(|_| LogicError::Internal(concat!("negative ", stringify!($name))))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Id of a registered user, `users.id`.
    UserId
);
id_type!(
    /// Id of a device of a user, `devices.id`.
    DeviceId
);
id_type!(
    /// Id of a connection, unique on its engine node for the node's lifetime.
    ConnId
);
id_type!(
    /// Id of a group, `groups.id`.
    GroupId
);
id_type!(
    /// Id of a message, shared by every recipient's copy, from the `message_ids` sequence.
    MessageId
);

/// Location of a device's connection: an engine node's `ConnectIntService` address and the
/// connection id on that node. Stored in Redis as "node|conn_id".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRef {
    /// The node's address, "host:port".
    pub node: String,
    /// The connection on that node.
    pub conn_id: ConnId,
}

impl ConnRef {
    /// Checks a reference received from an engine node.
    ///
    /// # Errors
    ///
    /// [`LogicError::InvalidArgument`] when `conn` is missing or its node is empty, longer
    /// than [`NODE_MAX_BYTES`], or contains a character other than those of host:port.
    pub fn from_proto(conn: Option<&im_proto::v1::ConnRef>) -> Result<ConnRef, LogicError> {
        let conn = conn.ok_or(LogicError::InvalidArgument {
            field: "conn",
            reason: "missing",
        })?;
        validate_node(&conn.node)?;
        Ok(ConnRef {
            node: conn.node.clone(),
            conn_id: ConnId(conn.conn_id),
        })
    }

    /// Returns the online-status value, "node|conn_id".
    pub fn status_value(&self) -> String {
        format!("{}|{}", self.node, self.conn_id)
    }

    /// Parses an online-status value written by [`ConnRef::status_value`].
    pub fn parse_status(value: &str) -> Option<ConnRef> {
        let (node, conn_id) = value.rsplit_once('|')?;
        if node.is_empty() {
            return None;
        }
        Some(ConnRef {
            node: node.to_owned(),
            conn_id: ConnId(conn_id.parse().ok()?),
        })
    }
}

fn validate_node(node: &str) -> Result<(), LogicError> {
    let reason = if node.is_empty() {
        "conn.node is empty"
    } else if node.len() > NODE_MAX_BYTES {
        "conn.node is longer than 255 bytes"
    } else if !node.chars().all(is_node_char) {
        "conn.node must be host:port, with only ASCII letters, digits and '.', '-', '_', ':', '[', ']'"
    } else {
        return Ok(());
    };
    Err(LogicError::InvalidArgument {
        field: "conn",
        reason,
    })
}

/// Returns whether `c` may appear in a node address: a host name, an IPv4 address or a bracketed
/// IPv6 address, then a port. Excluding '/', '@' and '|' keeps the address a plain URI authority
/// and the status value unambiguous.
pub(crate) fn is_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
}

/// Checks that a user id and a device id from a request are both non-zero.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] naming the zero field.
pub fn require_ids(user_id: u64, device_id: u64) -> Result<(UserId, DeviceId), LogicError> {
    if user_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "user_id",
            reason: "must not be 0",
        });
    }
    if device_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "device_id",
            reason: "must not be 0",
        });
    }
    Ok((UserId(user_id), DeviceId(device_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_value_round_trips() {
        let conn = ConnRef {
            node: "10.0.0.7:7100".to_owned(),
            conn_id: ConnId(42),
        };
        assert_eq!(conn.status_value(), "10.0.0.7:7100|42");
        assert_eq!(ConnRef::parse_status(&conn.status_value()), Some(conn));
    }

    #[test]
    fn malformed_status_values_are_rejected() {
        for value in ["", "|5", "node", "node|", "node|x", "node|-1"] {
            assert_eq!(ConnRef::parse_status(value), None, "{value:?}");
        }
    }

    #[test]
    fn node_addresses_are_checked() {
        let check = |node: &str| {
            let proto = im_proto::v1::ConnRef {
                node: node.to_owned(),
                conn_id: 1,
            };
            ConnRef::from_proto(Some(&proto)).is_ok()
        };
        for node in ["127.0.0.1:7100", "engine-2.internal:7100", "[::1]:7100"] {
            assert!(check(node), "{node} should pass");
        }
        for node in [
            "",
            "a|b:1",
            "a b:1",
            "user@host:1",
            "host:1/path",
            &"a".repeat(256),
        ] {
            assert!(!check(node), "{node} should fail");
        }
        assert!(ConnRef::from_proto(None).is_err());
    }

    #[test]
    fn ids_above_bigint_do_not_convert() {
        assert_eq!(UserId(u64::MAX).to_sql(), None);
        assert_eq!(UserId(7).to_sql(), Some(7));
        assert!(DeviceId::from_sql(-1).is_err());
    }
}
