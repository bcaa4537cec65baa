//! Just enough DER to walk Kerberos and SPNEGO messages: one tag-length-value at a time, with
//! every length checked against what is left (untrusted input; nothing here may panic).

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// One element: its identifier byte and its contents.
#[derive(Clone, Copy, Debug)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

/// Splits the first element off `input`.
pub fn next(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("empty"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("high tag numbers are not used here"));
    }
    let (&first, rest) = rest.split_first().ok_or(DerError("no length"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(DerError("element longer than its container"));
    }
    Ok((
        Tlv {
            tag,
            value: &rest[..len],
        },
        &rest[len..],
    ))
}

/// The single element `input` holds, which must have `tag`.
pub fn expect(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let (tlv, _) = next(input)?;
    if tlv.tag != tag {
        return Err(DerError("unexpected tag"));
    }
    Ok(tlv.value)
}

/// The fields of a SEQUENCE by context tag (`[n]` → index n), each the contents of its
/// explicit tag.
pub fn fields(sequence: &[u8]) -> Result<Vec<Option<&[u8]>>, DerError> {
    let mut out: Vec<Option<&[u8]>> = Vec::new();
    let mut rest = sequence;
    while !rest.is_empty() {
        let (tlv, after) = next(rest)?;
        // Context-specific, constructed: 0xa0 | n.
        if tlv.tag & 0xe0 == 0xa0 {
            let n = (tlv.tag & 0x1f) as usize;
            if out.len() <= n {
                out.resize(n + 1, None);
            }
            out[n] = Some(tlv.value);
        }
        rest = after;
    }
    Ok(out)
}

/// Field `n` of [`fields`], which must be present.
pub fn field<'a>(fields: &[Option<&'a [u8]>], n: usize) -> Result<&'a [u8], DerError> {
    fields
        .get(n)
        .copied()
        .flatten()
        .ok_or(DerError("missing field"))
}

/// A non-negative INTEGER that fits 64 bits.
pub fn integer(input: &[u8]) -> Result<i64, DerError> {
    let v = expect(input, 0x02)?;
    if v.is_empty() || v.len() > 8 {
        return Err(DerError("integer size"));
    }
    let negative = v[0] & 0x80 != 0;
    let mut n: i64 = if negative { -1 } else { 0 };
    for &b in v {
        n = (n << 8) | b as i64;
    }
    Ok(n)
}

pub fn octets(input: &[u8]) -> Result<&[u8], DerError> {
    expect(input, 0x04)
}

/// A KerberosString (GeneralString, 0x1b) as UTF-8.
pub fn string(input: &[u8]) -> Result<String, DerError> {
    let v = expect(input, 0x1b)?;
    String::from_utf8(v.to_vec()).map_err(|_| DerError("string is not UTF-8"))
}

/// A KerberosTime (GeneralizedTime `YYYYMMDDHHMMSSZ`) as Unix seconds.
pub fn time(input: &[u8]) -> Result<i64, DerError> {
    let v = expect(input, 0x18)?;
    let s = std::str::from_utf8(v).map_err(|_| DerError("time"))?;
    if s.len() != 15 || !s.ends_with('Z') || !s[..14].bytes().all(|b| b.is_ascii_digit()) {
        return Err(DerError("time format"));
    }
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().map_err(|_| DerError("time"));
    let (y, mo, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (h, mi, se) = (num(8, 10)?, num(10, 12)?, num(12, 14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(DerError("time out of range"));
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_integers() {
        assert_eq!(time(b"\x18\x0f19700101000000Z").unwrap(), 0);
        assert_eq!(time(b"\x18\x0f20261201141336Z").unwrap(), 1_796_134_416);
        assert!(time(b"\x18\x0f2026120114133xZ").is_err());
        assert_eq!(integer(b"\x02\x01\x05").unwrap(), 5);
        assert_eq!(integer(b"\x02\x02\x00\x80").unwrap(), 128);
        assert_eq!(integer(b"\x02\x01\xff").unwrap(), -1);
        assert!(next(b"\x30\x05\x01").is_err());
        assert!(next(b"\x30\x84\xff\xff\xff\xff").is_err());
    }
}
