//! Sans-IO codec for the Gearman binary protocol and the text admin protocol.
//!
//! Nothing here does I/O. [`encode`] appends one packet to a buffer;
//! [`decode`] looks at received bytes and returns one packet with the number of
//! bytes it used, or says more bytes are needed. Framing follows protocol.md
//! section 2: a 12-byte header (`\0REQ`/`\0RES`, type, size, both 32-bit
//! big-endian) and a payload whose leading arguments end in one NUL each and
//! whose last argument runs to the end of the payload (binary-safe).

mod admin;
mod packet;

pub use admin::{decode_line, decode_list, encode_admin_command};
pub use packet::{
    decode, encode, Decoded, Magic, Packet, PacketType, DEFAULT_MAX_PACKET, HEADER_LEN, MAX_HANDLE,
    MAX_WIRE_UNIQUE,
};
