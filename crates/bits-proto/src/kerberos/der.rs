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

/// One element with DER's minimal length.
pub fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// `[n]` explicit context tag around `inner`.
pub fn context(n: u8, inner: &[u8]) -> Vec<u8> {
    tlv(0xa0 | n, inner)
}

/// An INTEGER in its minimal two's-complement form.
pub fn write_integer(n: i64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    tlv(0x02, &bytes[start..])
}

/// A KerberosTime for Unix seconds `t`.
pub fn write_time(t: i64) -> Vec<u8> {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let text = format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    tlv(0x18, text.as_bytes())
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
        for t in [0, 1_796_134_416, 951_782_400, 4_102_444_799] {
            assert_eq!(time(&write_time(t)).unwrap(), t);
        }
        for n in [0, 5, 127, 128, 255, 256, -1, -129, 1 << 40] {
            assert_eq!(integer(&write_integer(n)).unwrap(), n);
        }
        assert_eq!(next(&tlv(0x04, &[7; 300])).unwrap().0.value.len(), 300);
    }
}
