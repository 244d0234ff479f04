//! `tcp:*` tracepoints (the same layouts on 6.1, 6.12 and 6.18).

/// `tcp:tcp_rcv_space_adjust`: `tcp_recvmsg` copied data to the process.
pub mod tcp_rcv_space_adjust {
    use crate::layout::{Field, Tracepoint};

    pub const SKADDR: Field<u64> = Field::new("skaddr", 8);
    pub const SOCK_COOKIE: Field<u64> = Field::new("sock_cookie", 64);

    pub const TRACEPOINT: Tracepoint = Tracepoint::fixed(
        "tcp",
        "tcp_rcv_space_adjust",
        &[SKADDR.layout(), SOCK_COOKIE.layout()],
    );
}

/// `tcp:tcp_retransmit_skb`: `skaddr` comes after `skbaddr`.
pub mod tcp_retransmit_skb {
    use crate::layout::{Field, Tracepoint};

    pub const SKADDR: Field<u64> = Field::new("skaddr", 16);

    pub const TRACEPOINT: Tracepoint =
        Tracepoint::fixed("tcp", "tcp_retransmit_skb", &[SKADDR.layout()]);
}

/// `tcp:tcp_send_reset`: `skaddr` comes after `skbaddr`.
pub mod tcp_send_reset {
    use crate::layout::{Field, Tracepoint};

    pub const SKADDR: Field<u64> = Field::new("skaddr", 16);

    pub const TRACEPOINT: Tracepoint =
        Tracepoint::fixed("tcp", "tcp_send_reset", &[SKADDR.layout()]);
}

/// `tcp:tcp_receive_reset`: `skaddr` is the first field.
pub mod tcp_receive_reset {
    use crate::layout::{Field, Tracepoint};

    pub const SKADDR: Field<u64> = Field::new("skaddr", 8);

    pub const TRACEPOINT: Tracepoint =
        Tracepoint::fixed("tcp", "tcp_receive_reset", &[SKADDR.layout()]);
}
