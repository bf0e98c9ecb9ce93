//! Source addresses: CloudTrail's `sourceIPAddress` is not always an IP.
//!
//! In: the field's text. Out: the first address it names, if any, and its network prefix (/24 for
//! IPv4, /64 for IPv6). Service names (`ec2.amazonaws.com`), `AWS Internal` and `redacted` name no
//! address; comma lists name their first; dotted quads with leading zeros (`10.0.0.07`, found in
//! anonymised trails) are read as decimal, where `Ipv4Addr::from_str` rejects them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use compact_str::CompactString;

/// The address a `sourceIPAddress` value names, if it names one.
pub fn parse_source_ip(text: &str) -> Option<IpAddr> {
    // Byte loops: the text is short, and this runs for every event.
    let first = match text.bytes().position(|b| b == b',') {
        Some(comma) => &text[..comma],
        None => text,
    }
    .trim();
    if first.bytes().any(|b| b == b':') {
        parse_ipv6(first).map(IpAddr::V6)
    } else {
        parse_padded_ipv4(first.as_bytes()).map(IpAddr::V4)
    }
}

/// A dotted quad of four decimal parts of one to three digits each, at most 255, leading zeros
/// allowed: what `Ipv4Addr::from_str` reads, and the zero-padded quads it refuses. One pass over
/// the bytes: a service name fails at its first letter.
fn parse_padded_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let start = at;
        let mut value = 0u32;
        while let Some(digit) = text.get(at).filter(|b| b.is_ascii_digit()) {
            if at - start == 3 {
                return None;
            }
            value = value * 10 + u32::from(digit - b'0');
            at += 1;
        }
        if at == start || value > 255 {
            return None;
        }
        *octet = value as u8;
    }
    (at == text.len()).then_some(Ipv4Addr::from(octets))
}

/// An IPv6 address as `Ipv6Addr::from_str` reads it. Addresses of hex groups alone are read in
/// one pass (the standard parser tries each group as an embedded IPv4 address first, which made
/// it the larger part of judging an IPv6 event); one with a dot is left to the standard parser.
fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    let bytes = text.as_bytes();
    if bytes.contains(&b'.') {
        return text.parse().ok();
    }
    let mut groups = [0u16; 8];
    let mut read = 0;
    // Where `::` stands, in groups read before it.
    let mut gap = None;
    let mut at = 0;
    if bytes.starts_with(b"::") {
        gap = Some(0);
        at = 2;
    }
    while at < bytes.len() {
        let start = at;
        let mut value = 0u16;
        while let Some(digit) = bytes.get(at).and_then(|&b| char::from(b).to_digit(16)) {
            if at - start == 4 {
                return None;
            }
            value = value << 4 | digit as u16;
            at += 1;
        }
        if at == start || read == 8 {
            return None;
        }
        groups[read] = value;
        read += 1;
        match bytes.get(at) {
            None => break,
            Some(b':') => at += 1,
            Some(_) => return None,
        }
        if bytes.get(at) == Some(&b':') {
            if gap.is_some() {
                return None;
            }
            gap = Some(read);
            at += 1;
        } else if at == bytes.len() {
            // A single colon ends nothing.
            return None;
        }
    }
    match gap {
        None if read == 8 => Some(Ipv6Addr::from(groups)),
        // `::` stands for one group of zeros at least.
        Some(gap) if read < 8 => {
            let mut address = [0u16; 8];
            address[..gap].copy_from_slice(&groups[..gap]);
            address[8 - (read - gap)..].copy_from_slice(&groups[gap..read]);
            Some(Ipv6Addr::from(address))
        }
        _ => None,
    }
}

/// The network an address belongs to, as baselines compare them: IPv4 /24, IPv6 /64.
pub fn network_prefix(ip: IpAddr) -> CompactString {
    let mut out = CompactString::default();
    write_network_prefix(ip, &mut out);
    out
}

/// [`network_prefix`], appended to `out` (detection writes one per event into a reused buffer).
pub fn write_network_prefix(ip: IpAddr, out: &mut impl std::fmt::Write) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            // At most "255.255.255.0/24": written into a stack buffer, then appended once.
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in [a, b, c] {
                for digit in decimal(octet) {
                    text[len] = digit;
                    len += 1;
                }
                text[len] = b'.';
                len += 1;
            }
            text[len..len + 4].copy_from_slice(b"0/24");
            len += 4;
            let _ = out.write_str(std::str::from_utf8(&text[..len]).unwrap_or_default());
        }
        IpAddr::V6(v6) => {
            // As `Ipv6Addr`'s display writes the address with its last four groups zeroed (RFC
            // 5952): those four and any zero groups just before them are the longest run of
            // zeros, which becomes `::`; the groups before it in lower-case hex. Its formatting
            // machinery cost more than the rest of judging an event.
            let groups = v6.segments();
            let kept = groups[..4]
                .iter()
                .rposition(|&g| g != 0)
                .map_or(0, |last| last + 1);
            // At most "ffff:ffff:ffff:ffff::/64".
            let mut text = [0u8; 24];
            let mut len = 0;
            for (i, &group) in groups[..kept].iter().enumerate() {
                if i > 0 {
                    text[len] = b':';
                    len += 1;
                }
                let digits = (16 - group.leading_zeros()).div_ceil(4).max(1);
                for shift in (0..digits).rev() {
                    text[len] = b"0123456789abcdef"[usize::from(group >> (4 * shift) & 0xf)];
                    len += 1;
                }
            }
            text[len..len + 5].copy_from_slice(b"::/64");
            len += 5;
            let _ = out.write_str(std::str::from_utf8(&text[..len]).unwrap_or_default());
        }
    }
}

/// The ASCII decimal digits of `n`, without leading zeros.
fn decimal(n: u8) -> impl Iterator<Item = u8> {
    let digits = [n / 100, n / 10 % 10, n % 10];
    let skip = if n >= 100 {
        0
    } else if n >= 10 {
        1
    } else {
        2
    };
    digits.into_iter().skip(skip).map(|d| b'0' + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_cloudtrail_writes() {
        assert_eq!(
            parse_source_ip("203.0.113.7"),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            parse_source_ip("81.2.69.142, 192.168.10.10"),
            Some("81.2.69.142".parse().unwrap())
        );
        assert_eq!(
            parse_source_ip("253.252.51.07"),
            Some("253.252.51.7".parse().unwrap())
        );
        assert_eq!(
            parse_source_ip("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_source_ip(" 10.0.0.1 "), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            parse_source_ip("2001:db8::1 , 10.0.0.1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_source_ip("::ffff:192.0.2.1"),
            Some("::ffff:192.0.2.1".parse().unwrap())
        );
        assert_eq!(parse_source_ip("ec2.amazonaws.com"), None);
        assert_eq!(parse_source_ip("AWS Internal"), None);
        assert_eq!(parse_source_ip("1.2.3.256"), None);
        assert_eq!(parse_source_ip("1.2.3"), None);
        assert_eq!(parse_source_ip("1.2.3.4.5"), None);
        assert_eq!(parse_source_ip(""), None);
    }

    #[test]
    fn ipv6_edge_cases_read_as_the_standard_library_reads_them() {
        for text in [
            "1:2:3:4::5:6:7:8",
            "::1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8::",
            "1:2:3:4:5:6:7::",
            "::1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "::",
            ":::",
            "1::",
            "::1",
            "1:",
            ":1",
            "1::2::3",
            "1:::2",
            "12345::",
            "0000:0000:0000:0000:0000:0000:0000:0000",
            "A:B:C:D:E:F:0:1",
            "g::",
            "1::2%eth0",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
        ] {
            assert_eq!(parse_ipv6(text), text.parse::<Ipv6Addr>().ok(), "{text:?}");
        }
    }

    /// The reading before the one-pass parser: the standard library's, then parts split on dots.
    fn padded_by_parts(text: &str) -> Option<Ipv4Addr> {
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Some(ip);
        }
        let mut octets = [0u8; 4];
        let mut parts = text.split('.');
        for octet in &mut octets {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *octet = part.parse().ok()?;
        }
        parts.next().is_none().then_some(Ipv4Addr::from(octets))
    }

    proptest::proptest! {
        #[test]
        fn ipv6_networks_are_written_as_the_standard_library_writes_them(
            groups in proptest::array::uniform4(proptest::prop_oneof![0u16..=0, 1u16..=0xf, 0u16..=0xffff]),
            low in proptest::num::u64::ANY,
        ) {
            let high = groups.iter().fold(0u128, |bits, &g| bits << 16 | u128::from(g));
            let ip = Ipv6Addr::from(high << 64 | u128::from(low));
            let mut written = String::new();
            write_network_prefix(IpAddr::V6(ip), &mut written);
            let standard = format!("{}/64", Ipv6Addr::from(high << 64));
            proptest::prop_assert_eq!(written, standard);
        }

        #[test]
        fn ipv6_addresses_read_as_the_standard_library_reads_them(
            text in "[0-9a-fA-F:]{0,41}|[0-9a-g:.%]{0,24}|(([0-9a-f]{0,5}|::?):){0,9}[0-9a-f]{0,5}|\
                     ([0-9a-f]{1,4}:){0,8}:?(:[0-9a-f]{1,4}){0,8}",
            address in proptest::num::u128::ANY,
            zeros in proptest::num::u8::ANY,
        ) {
            proptest::prop_assert_eq!(parse_ipv6(&text), text.parse::<Ipv6Addr>().ok(), "{:?}", text);
            // Written addresses, with runs of zero groups for `::` to stand for.
            let mut groups = Ipv6Addr::from(address).segments();
            for (i, group) in groups.iter_mut().enumerate() {
                if zeros & (1 << i) != 0 {
                    *group = 0;
                }
            }
            let ip = Ipv6Addr::from(groups);
            for written in [ip.to_string(), format!("{ip:?}").to_uppercase(), groups.map(|g| format!("{g:04x}")).join(":")] {
                proptest::prop_assert_eq!(parse_ipv6(&written), Some(ip), "{:?}", written);
            }
        }

        #[test]
        fn dotted_quads_read_as_the_standard_library_and_split_parts_read_them(
            text in "[0-9.]{0,17}|[0-9a-z. +-]{0,12}|0{0,3}[0-9]{1,3}\\.[0-9]{1,4}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        ) {
            proptest::prop_assert_eq!(parse_padded_ipv4(text.as_bytes()), padded_by_parts(&text), "{:?}", text);
        }
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_64() {
        assert_eq!(network_prefix("203.0.113.7".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(network_prefix("1.20.0.7".parse().unwrap()), "1.20.0.0/24");
        assert_eq!(
            network_prefix("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}
