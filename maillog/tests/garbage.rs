//! No input panics the parsers: every prefix of every known line, those lines with
//! bytes changed at random, and random text. (A fuzzer's corpus, run as a test: the
//! cases are generated from a fixed seed, so a failure reproduces.)

use mxlimit_maillog::Reader;

const KNOWN: &[&str] = &[
    "Jun  3 10:00:01 mx sm-mta[4242]: 553A0x1F004242: <nouser@example.test>... User unknown",
    "Jun  3 10:00:02 mx sm-mta[4242]: 553A0x1F004242: from=<a@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA-v4, relay=host.example [IPv6:2001:db8:0:0:0:0:0:1] (may be forged)",
    "Jun  3 10:00:09 mx sm-mta[7]: 553A0x1F000007: lost input channel from [192.0.2.7] to MTA-v4 after rcpt",
    "Jun  3 10:00:01 mx sm-mta[9]: 553A0x1F000009: ruleset=check_rcpt, arg1=<u@example.test>, relay=[192.0.2.9], reject=550 5.1.1 <u@example.test>... User unknown",
    "Jun  3 10:00:01 mx sm-mta[11]: 553A0x1F000011: rejecting commands from [192.0.2.11] [192.0.2.11] due to pre-greeting traffic after 0 seconds",
    "Jun  3 10:00:02 mx sm-mta[12]: 553A0x1F000012: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): x, user=bob, relay=host.example [192.0.2.12]",
    "Jun 03 10:00:01 mx postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]:25: 550 5.1.1 <nouser@example.test>: Recipient address rejected: User unknown in local recipient table; from=<a@b.example> to=<nouser@example.test> proto=ESMTP helo=<c>",
    "2026-12-03T10:00:01.123456+00:00 mx postfix/postscreen[77]: PREGREET 11 after 0.21 from [2001:db8::7]:52311: EHLO x\\r\\n",
    "Jun  3 10:00:05 mx postfix/smtpd[8]: warning: unknown[192.0.2.12]: SASL LOGIN authentication failed: authentication failure",
    "2024-06-03 10:00:01 +0100 [99] H=mail.example (helo) [2001:db8::7]:4000 F=<> rejected RCPT <v@example.test>: Unrouteable address",
    "2024-06-03 10:00:03 SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from H=[192.0.2.9] input=\"EHLO\"",
    "Jun  3 10:00:05 mx exim4[12]: login authenticator failed for (client.example) [192.0.2.11]: 535 Incorrect authentication data",
];

/// xorshift64*: enough randomness for test inputs, and no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn every_prefix_of_every_known_line_is_read_without_panic() {
    let mut r = Reader::new();
    let mut out = Vec::new();
    for line in KNOWN {
        for (i, _) in line.char_indices() {
            r.line(&line[..i], &mut out);
        }
        r.line(line, &mut out);
    }
    assert!(r.stats().matched > 0);
    assert_eq!(r.stats().lines, r.stats().matched + r.stats().skipped);
}

#[test]
fn changed_and_random_lines_are_read_without_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut r = Reader::new();
    let mut out = Vec::new();
    let alphabet: Vec<char> = " []<>:;,.=()@/\\-+0123456789abcdefIPv6:\u{e9}\u{1F4E7}\0\r\t"
        .chars()
        .collect();
    for _ in 0..20_000 {
        let base = KNOWN[(rng.next() % KNOWN.len() as u64) as usize];
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() % (chars.len() as u64 + 1)) as usize;
            let c = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            match rng.next() % 3 {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
        }
        let line: String = chars.into_iter().collect();
        r.line(&line, &mut out);
        let random: String = (0..(rng.next() % 300))
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        r.line(&random, &mut out);
        out.clear();
    }
    // A huge line is one line.
    r.line(&"x".repeat(10_000_000), &mut out);
    assert_eq!(r.stats().lines, 40_001);
}
