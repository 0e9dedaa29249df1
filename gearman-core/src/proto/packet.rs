//! Binary packets: types, encode, decode.

use crate::error::{Error, Result};

/// Size of the packet header in bytes (magic, type, size).
pub const HEADER_LEN: usize = 12;

/// Default upper bound on a received payload: 64 MiB. A larger size field is
/// a protocol error, so a broken or hostile server cannot make us allocate up
/// to 4 GiB.
pub const DEFAULT_MAX_PACKET: usize = 64 << 20;

const REQ: [u8; 4] = *b"\0REQ";
const RES: [u8; 4] = *b"\0RES";

/// Direction marker: `\0REQ` to the server, `\0RES` from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Magic {
    /// `\0REQ`: sent by clients and workers.
    Req,
    /// `\0RES`: sent by the job server.
    Res,
}

macro_rules! packet_types {
    ($( $name:ident = $num:literal, $fields:literal, $text:literal; )*) => {
        /// Packet types 1 to 42 (protocol.md section 3). Type 5 is unused by
        /// the protocol and has no variant: decoding it is a protocol error.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum PacketType {
            $(
                #[doc = $text]
                $name = $num,
            )*
        }

        impl PacketType {
            /// The type for a wire number, if it is one of the known types.
            pub fn from_u32(n: u32) -> Option<PacketType> {
                match n {
                    $( $num => Some(PacketType::$name), )*
                    _ => None,
                }
            }

            /// Number of arguments in the payload, the last one included.
            /// All but the last end in a NUL on the wire.
            pub fn field_count(self) -> usize {
                match self {
                    $( PacketType::$name => $fields, )*
                }
            }

            /// The protocol's name for the type, e.g. `SUBMIT_JOB_BG`.
            pub fn name(self) -> &'static str {
                match self {
                    $( PacketType::$name => $text, )*
                }
            }
        }
    };
}

packet_types! {
    CanDo = 1, 1, "CAN_DO";
    CantDo = 2, 1, "CANT_DO";
    ResetAbilities = 3, 0, "RESET_ABILITIES";
    PreSleep = 4, 0, "PRE_SLEEP";
    Noop = 6, 0, "NOOP";
    SubmitJob = 7, 3, "SUBMIT_JOB";
    JobCreated = 8, 1, "JOB_CREATED";
    GrabJob = 9, 0, "GRAB_JOB";
    NoJob = 10, 0, "NO_JOB";
    JobAssign = 11, 3, "JOB_ASSIGN";
    WorkStatus = 12, 3, "WORK_STATUS";
    WorkComplete = 13, 2, "WORK_COMPLETE";
    WorkFail = 14, 1, "WORK_FAIL";
    GetStatus = 15, 1, "GET_STATUS";
    EchoReq = 16, 1, "ECHO_REQ";
    EchoRes = 17, 1, "ECHO_RES";
    SubmitJobBg = 18, 3, "SUBMIT_JOB_BG";
    Error = 19, 2, "ERROR";
    StatusRes = 20, 5, "STATUS_RES";
    SubmitJobHigh = 21, 3, "SUBMIT_JOB_HIGH";
    SetClientId = 22, 1, "SET_CLIENT_ID";
    CanDoTimeout = 23, 2, "CAN_DO_TIMEOUT";
    AllYours = 24, 0, "ALL_YOURS";
    WorkException = 25, 2, "WORK_EXCEPTION";
    OptionReq = 26, 1, "OPTION_REQ";
    OptionRes = 27, 1, "OPTION_RES";
    WorkData = 28, 2, "WORK_DATA";
    WorkWarning = 29, 2, "WORK_WARNING";
    GrabJobUniq = 30, 0, "GRAB_JOB_UNIQ";
    JobAssignUniq = 31, 4, "JOB_ASSIGN_UNIQ";
    SubmitJobHighBg = 32, 3, "SUBMIT_JOB_HIGH_BG";
    SubmitJobLow = 33, 3, "SUBMIT_JOB_LOW";
    SubmitJobLowBg = 34, 3, "SUBMIT_JOB_LOW_BG";
    SubmitJobSched = 35, 8, "SUBMIT_JOB_SCHED";
    SubmitJobEpoch = 36, 4, "SUBMIT_JOB_EPOCH";
    SubmitReduceJob = 37, 5, "SUBMIT_REDUCE_JOB";
    SubmitReduceJobBackground = 38, 5, "SUBMIT_REDUCE_JOB_BACKGROUND";
    GrabJobAll = 39, 0, "GRAB_JOB_ALL";
    JobAssignAll = 40, 5, "JOB_ASSIGN_ALL";
    GetStatusUnique = 41, 1, "GET_STATUS_UNIQUE";
    StatusResUnique = 42, 6, "STATUS_RES_UNIQUE";
}

impl PacketType {
    /// Whether the first field (or the only one) of a received packet of this
    /// type is a job handle, whose trailing NULs are stripped on decode
    /// (protocol.md 4.6: WORK_FAIL converted from an exception carries one).
    fn leads_with_handle(self) -> bool {
        matches!(
            self,
            PacketType::JobCreated
                | PacketType::WorkFail
                | PacketType::WorkStatus
                | PacketType::WorkComplete
                | PacketType::WorkException
                | PacketType::WorkData
                | PacketType::WorkWarning
                | PacketType::StatusRes
                | PacketType::JobAssign
                | PacketType::JobAssignUniq
                | PacketType::JobAssignAll
        )
    }
}

/// One decoded packet: direction, type and its arguments (the last one may
/// hold any bytes, NUL included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Direction marker.
    pub magic: Magic,
    /// Packet type.
    pub kind: PacketType,
    /// Exactly [`PacketType::field_count`] arguments.
    pub args: Vec<Vec<u8>>,
}

impl Packet {
    /// A request packet (`\0REQ`) from owned arguments.
    pub fn req(kind: PacketType, args: Vec<Vec<u8>>) -> Packet {
        Packet {
            magic: Magic::Req,
            kind,
            args,
        }
    }

    /// A response packet (`\0RES`) from owned arguments.
    pub fn res(kind: PacketType, args: Vec<Vec<u8>>) -> Packet {
        Packet {
            magic: Magic::Res,
            kind,
            args,
        }
    }

    /// Argument `i` as bytes (empty if absent).
    pub fn arg(&self, i: usize) -> &[u8] {
        self.args.get(i).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Argument `i` as (lossy) UTF-8 text.
    pub fn arg_str(&self, i: usize) -> String {
        String::from_utf8_lossy(self.arg(i)).into_owned()
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let args: Vec<&[u8]> = self.args.iter().map(Vec::as_slice).collect();
        encode(self.magic, self.kind, &args, out)
    }
}

/// Appends one packet to `out`.
///
/// `args` must have exactly `kind.field_count()` entries; every argument but
/// the last must be free of NUL bytes (the server splits on them). The total
/// payload must fit the 32-bit size field. On error nothing is appended.
pub fn encode(magic: Magic, kind: PacketType, args: &[&[u8]], out: &mut Vec<u8>) -> Result<()> {
    let want = kind.field_count();
    if args.len() != want {
        return Err(Error::invalid_argument(format!(
            "{} takes {want} argument(s), got {}",
            kind.name(),
            args.len()
        )));
    }
    let mut size: usize = 0;
    for (i, a) in args.iter().enumerate() {
        let last = i + 1 == want;
        if !last && a.contains(&0) {
            return Err(Error::invalid_argument(format!(
                "argument {} of {} contains a NUL byte",
                i + 1,
                kind.name()
            )));
        }
        size += a.len() + usize::from(!last);
    }
    let size32 = u32::try_from(size).map_err(|_| {
        Error::invalid_argument(format!(
            "{} payload of {size} bytes exceeds 4 GiB",
            kind.name()
        ))
    })?;
    out.reserve(HEADER_LEN + size);
    out.extend_from_slice(match magic {
        Magic::Req => &REQ,
        Magic::Res => &RES,
    });
    out.extend_from_slice(&(kind as u32).to_be_bytes());
    out.extend_from_slice(&size32.to_be_bytes());
    for (i, a) in args.iter().enumerate() {
        out.extend_from_slice(a);
        if i + 1 != want {
            out.push(0);
        }
    }
    Ok(())
}

/// Result of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole packet, and how many bytes of the input it used.
    Packet(Packet, usize),
    /// The input holds only part of a packet: at least this many more bytes
    /// are needed.
    NeedMore(usize),
}

/// Decodes one packet from the front of `buf`.
///
/// Errors (all [`crate::ErrorKind::Protocol`]): the first byte is not 0 (text
/// where a binary packet was expected), a bad magic, an unknown type (0, 5 or
/// above 42), a size above `max_packet`, or fewer NUL separators than the
/// type needs, or (in a `\0RES` packet) a field that is not a payload
/// longer than its bound: a job handle over [`MAX_HANDLE`] bytes, a function
/// name over 512, a unique key over [`MAX_WIRE_UNIQUE`], a number, flag,
/// error code or option name over 64, an ERROR text over 4096. Trailing NULs
/// are stripped from received job handles. Never panics, whatever the input.
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Decoded> {
    if let Some(&b) = buf.first() {
        if b != 0 {
            return Err(Error::protocol(format!(
                "expected a binary packet, got text starting with byte 0x{b:02x}"
            )));
        }
    }
    if buf.len() < HEADER_LEN {
        // Check the part of the magic we have, so garbage fails early.
        let have = buf.len().min(4);
        if buf[..have] != REQ[..have] && buf[..have] != RES[..have] {
            return Err(Error::protocol("bad packet magic"));
        }
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    }
    let magic = match &buf[..4] {
        m if m == REQ => Magic::Req,
        m if m == RES => Magic::Res,
        m => {
            return Err(Error::protocol(format!("bad packet magic {m:02x?}")));
        }
    };
    let num = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let kind = PacketType::from_u32(num)
        .ok_or_else(|| Error::protocol(format!("unknown packet type {num}")))?;
    let size = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if size > max_packet {
        return Err(Error::protocol(format!(
            "{} packet of {size} bytes exceeds the limit of {max_packet} bytes",
            kind.name()
        )));
    }
    let total = HEADER_LEN + size;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let payload = &buf[HEADER_LEN..total];
    let fields = kind.field_count();
    let mut args = Vec::with_capacity(fields);
    if fields == 0 {
        if !payload.is_empty() {
            return Err(Error::protocol(format!(
                "{} carries no arguments but has a {size}-byte payload",
                kind.name()
            )));
        }
    } else {
        let mut rest = payload;
        for _ in 0..fields - 1 {
            let Some(pos) = rest.iter().position(|&b| b == 0) else {
                return Err(Error::protocol(format!(
                    "{} needs {} NUL-separated arguments",
                    kind.name(),
                    fields
                )));
            };
            args.push(rest[..pos].to_vec());
            rest = &rest[pos + 1..];
        }
        args.push(rest.to_vec());
        if magic == Magic::Res && kind.leads_with_handle() {
            let h = &mut args[0];
            while h.last() == Some(&0) {
                h.pop();
            }
        }
    }
    if magic == Magic::Res {
        check_res_fields(kind, &args)?;
    }
    Ok(Decoded::Packet(Packet { magic, kind, args }, total))
}

/// Longest job handle accepted from a server: 63 bytes (gearmand's
/// `GEARMAND_JOB_HANDLE_SIZE` is 64 with the NUL; GET_STATUS needs < 64).
pub const MAX_HANDLE: usize = 63;

/// Longest unique key accepted from a server: 64 bytes (gearmand's limit;
/// we send at most 63, see [`crate::MAX_UNIQUE`]).
pub const MAX_WIRE_UNIQUE: usize = 64;

/// Longest number or flag field (STATUS_RES, WORK_STATUS) and error code
/// or option name accepted from a server.
const MAX_SMALL_FIELD: usize = 64;

/// Longest ERROR text accepted from a server.
const MAX_ERROR_TEXT: usize = 4096;

/// Bounds every field of a server's packet that is not a payload: job
/// handles, function names, unique keys, numbers, error codes and texts
/// (issue 10 item 4). Longer is a protocol error, never a result.
fn check_res_fields(kind: PacketType, args: &[Vec<u8>]) -> Result<()> {
    use crate::job::MAX_FUNCTION;
    let limits: &[(&str, usize)] = match kind {
        PacketType::JobCreated
        | PacketType::WorkData
        | PacketType::WorkWarning
        | PacketType::WorkComplete
        | PacketType::WorkFail
        | PacketType::WorkException => &[("job handle", MAX_HANDLE)],
        PacketType::WorkStatus => &[
            ("job handle", MAX_HANDLE),
            ("numerator", MAX_SMALL_FIELD),
            ("denominator", MAX_SMALL_FIELD),
        ],
        PacketType::StatusRes => &[
            ("job handle", MAX_HANDLE),
            ("known flag", MAX_SMALL_FIELD),
            ("running flag", MAX_SMALL_FIELD),
            ("numerator", MAX_SMALL_FIELD),
            ("denominator", MAX_SMALL_FIELD),
        ],
        PacketType::StatusResUnique => &[
            ("unique key", MAX_WIRE_UNIQUE),
            ("known flag", MAX_SMALL_FIELD),
            ("running flag", MAX_SMALL_FIELD),
            ("numerator", MAX_SMALL_FIELD),
            ("denominator", MAX_SMALL_FIELD),
            ("waiting count", MAX_SMALL_FIELD),
        ],
        PacketType::JobAssign => &[("job handle", MAX_HANDLE), ("function name", MAX_FUNCTION)],
        PacketType::JobAssignUniq => &[
            ("job handle", MAX_HANDLE),
            ("function name", MAX_FUNCTION),
            ("unique key", MAX_WIRE_UNIQUE),
        ],
        PacketType::JobAssignAll => &[
            ("job handle", MAX_HANDLE),
            ("function name", MAX_FUNCTION),
            ("unique key", MAX_WIRE_UNIQUE),
            ("reducer", MAX_FUNCTION),
        ],
        PacketType::Error => &[
            ("error code", MAX_SMALL_FIELD),
            ("error text", MAX_ERROR_TEXT),
        ],
        PacketType::OptionRes => &[("option name", MAX_SMALL_FIELD)],
        _ => &[],
    };
    for ((what, max), a) in limits.iter().zip(args) {
        if a.len() > *max {
            return Err(Error::protocol(format!(
                "{} from the job server carries a {what} of {} bytes; at most {max} are allowed",
                kind.name(),
                a.len()
            )));
        }
    }
    Ok(())
}
