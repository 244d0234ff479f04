//! `sock:*` tracepoints.

/// `sock:inet_sock_set_state` (every kernel hopprobe supports): handshakes and lifetimes. Its
/// offsets follow tracefs (see [`super::SetStateLayout`]); these are the defaults.
pub mod inet_sock_set_state {
    use crate::layout::{Field, FieldLayout, Offsets, Tracepoint};

    pub const SKADDR: Field<u64> = Field::new("skaddr", 8);
    pub const OLDSTATE: Field<i32> = Field::new("oldstate", 16);
    pub const NEWSTATE: Field<i32> = Field::new("newstate", 20);
    pub const SPORT: Field<u16> = Field::new("sport", 24);
    pub const DPORT: Field<u16> = Field::new("dport", 26);
    pub const FAMILY: Field<u16> = Field::new("family", 28);
    pub const PROTOCOL: Field<u16> = Field::new("protocol", 30);
    pub const SADDR: Field<[u8; 4]> = Field::new("saddr", 32);
    pub const DADDR: Field<[u8; 4]> = Field::new("daddr", 36);
    pub const SADDR_V6: Field<[u8; 16]> = Field::new("saddr_v6", 40);
    pub const DADDR_V6: Field<[u8; 16]> = Field::new("daddr_v6", 56);

    const FIELDS: &[FieldLayout] = &[
        SKADDR.layout(),
        OLDSTATE.layout(),
        NEWSTATE.layout(),
        SPORT.layout(),
        DPORT.layout(),
        FAMILY.layout(),
        PROTOCOL.layout(),
        SADDR.layout(),
        DADDR.layout(),
        SADDR_V6.layout(),
        DADDR_V6.layout(),
    ];
    pub const TRACEPOINT: Tracepoint = Tracepoint {
        category: "sock",
        name: "inet_sock_set_state",
        offsets: Offsets::FromTracefs,
        fields: FIELDS,
    };
}

/// `sock:sock_recv_length` (Linux 6.12+, task context): a process read from a socket.
pub mod sock_recv_length {
    use crate::layout::{Field, Tracepoint};

    pub const SK: Field<u64> = Field::new("sk", 8);
    pub const PROTOCOL: Field<u16> = Field::new("protocol", 18);
    pub const RET: Field<i32> = Field::new("ret", 20);
    pub const FLAGS: Field<i32> = Field::new("flags", 24);

    pub const TRACEPOINT: Tracepoint = Tracepoint::fixed(
        "sock",
        "sock_recv_length",
        &[SK.layout(), PROTOCOL.layout(), RET.layout(), FLAGS.layout()],
    );
}
