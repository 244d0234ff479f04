//! Where the programs read the fields of the tracepoints they run on: one table, used by the
//! eBPF programs for their reads and by `hopprobe` to compare against the kernel's tracefs
//! `format` files before attaching.
//!
//! Rust eBPF has no CO-RE relocations, so a program reads a tracepoint record at offsets fixed
//! when it was built ([`Offsets::Fixed`]: a kernel whose format differs is not attached to), or
//! at offsets userspace takes from tracefs and writes into a global before loading
//! ([`Offsets::FromTracefs`], `sock:inet_sock_set_state`, the one hopprobe cannot run without).
//! A [`Field`] carries the type the program reads, so the size compared against tracefs is the
//! size the program reads.

use core::{marker::PhantomData, mem::size_of};

pub mod sock;
pub mod syscalls;
pub mod tcp;

/// A field of a tracepoint record, read by a program as a `T`.
pub struct Field<T> {
    pub name: &'static str,
    /// Byte offset in the record, common header included (as tracefs counts).
    pub offset: u16,
    // `fn() -> T`: the field is Copy, Send and Sync whatever `T` is.
    _type: PhantomData<fn() -> T>,
}

// Derives would demand `T: Clone`.
impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Field<T> {}

impl<T> Field<T> {
    pub const fn new(name: &'static str, offset: u16) -> Self {
        Self {
            name,
            offset,
            _type: PhantomData,
        }
    }

    /// The offset as the eBPF read helpers take it.
    pub const fn at(self) -> usize {
        self.offset as usize
    }

    /// Name, offset and size, without the type: what tracefs says about a field.
    pub const fn layout(self) -> FieldLayout {
        FieldLayout {
            name: self.name,
            offset: self.offset,
            size: size_of::<T>() as u16,
        }
    }
}

/// A field as a tracepoint `format` file describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    pub name: &'static str,
    pub offset: u16,
    pub size: u16,
}

/// Whose offsets the program reads at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offsets {
    /// The table's, compiled into the program: the kernel's must be the same.
    Fixed,
    /// The kernel's, written by userspace before loading; the table's are the defaults. Names
    /// and sizes must still match.
    FromTracefs,
}

/// A tracepoint and the fields a program reads from its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    pub offsets: Offsets,
    pub fields: &'static [FieldLayout],
}

impl Tracepoint {
    pub const fn fixed(
        category: &'static str,
        name: &'static str,
        fields: &'static [FieldLayout],
    ) -> Self {
        Self {
            category,
            name,
            offsets: Offsets::Fixed,
            fields,
        }
    }
}

/// Offsets of `sock:inet_sock_set_state`'s fields on this kernel, written into the programs'
/// `SET_STATE_LAYOUT` global before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateLayout {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// Explicit so the struct has no implicit padding.
    pub _pad: [u16; 5],
}
const _: () = assert!(size_of::<SetStateLayout>() == 32);

impl SetStateLayout {
    /// The table's offsets (6.1 through 6.18): the programs run with them if userspace writes
    /// nothing.
    pub const DEFAULT: Self = {
        use sock::inet_sock_set_state as f;
        Self {
            skaddr: f::SKADDR.offset,
            oldstate: f::OLDSTATE.offset,
            newstate: f::NEWSTATE.offset,
            sport: f::SPORT.offset,
            dport: f::DPORT.offset,
            family: f::FAMILY.offset,
            protocol: f::PROTOCOL.offset,
            saddr: f::SADDR.offset,
            daddr: f::DADDR.offset,
            saddr_v6: f::SADDR_V6.offset,
            daddr_v6: f::DADDR_V6.offset,
            _pad: [0; 5],
        }
    };

    /// The layout whose offsets `offset_of` gives for the table's fields; `Err` names the
    /// first field it has none for.
    pub fn follow(
        mut offset_of: impl FnMut(FieldLayout) -> Option<u16>,
    ) -> Result<Self, &'static str> {
        use sock::inet_sock_set_state as f;
        let mut at = |field: FieldLayout| offset_of(field).ok_or(field.name);
        Ok(Self {
            skaddr: at(f::SKADDR.layout())?,
            oldstate: at(f::OLDSTATE.layout())?,
            newstate: at(f::NEWSTATE.layout())?,
            sport: at(f::SPORT.layout())?,
            dport: at(f::DPORT.layout())?,
            family: at(f::FAMILY.layout())?,
            protocol: at(f::PROTOCOL.layout())?,
            saddr: at(f::SADDR.layout())?,
            daddr: at(f::DADDR.layout())?,
            saddr_v6: at(f::SADDR_V6.layout())?,
            daddr_v6: at(f::DADDR_V6.layout())?,
            _pad: [0; 5],
        })
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C) plain data without implicit padding (asserted above).
unsafe impl aya::Pod for SetStateLayout {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_the_table_gives_the_defaults() {
        let followed = SetStateLayout::follow(|f| Some(f.offset));
        assert_eq!(followed, Ok(SetStateLayout::DEFAULT));
        assert_eq!(
            SetStateLayout::follow(|f| (f.name != "dport").then_some(f.offset)),
            Err("dport")
        );
    }

    #[test]
    fn sizes_are_the_read_types() {
        assert_eq!(sock::inet_sock_set_state::SADDR_V6.layout().size, 16);
        assert_eq!(sock::sock_recv_length::PROTOCOL.layout().size, 2);
        assert_eq!(syscalls::RET.layout().size, 8);
    }

    #[test]
    fn every_followed_field_is_listed() {
        // `follow` and the tracepoint's field list must name the same fields.
        let mut asked = [""; 11];
        let mut n = 0;
        let _ = SetStateLayout::follow(|f| {
            asked[n] = f.name;
            n += 1;
            Some(f.offset)
        });
        let listed: [&str; 11] =
            core::array::from_fn(|i| sock::inet_sock_set_state::TRACEPOINT.fields[i].name);
        assert_eq!(asked, listed);
    }
}
