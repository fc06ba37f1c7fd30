//! What reading a mail log costs: a million lines of a log under a dictionary attack
//! (sendmail, Postfix and Exim lines, most of them of no interest, as in a real log).
//! `cargo bench -p mxlimit-maillog --bench parse`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mxlimit_maillog::Reader;

/// One round of ten lines: four events, six lines to skip.
fn lines(rounds: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(rounds * 10);
    for i in 0..rounds {
        let (a, b) = (i % 250, (i / 250) % 250);
        let q = format!("553A0x{i:08X}");
        v.push(format!(
            "Jun  3 10:00:01 mx sm-mta[{i}]: {q}: <u{i}@example.test>... User unknown"
        ));
        v.push(format!("Jun  3 10:00:01 mx sm-mta[{i}]: {q}: from=<a@b.example>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA-v4, relay=[10.{b}.{a}.1]"));
        v.push(format!("Jun  3 10:00:01 mx sm-mta[{i}]: {q}: to=<ok@example.test>, delay=00:00:00, mailer=local, stat=Sent"));
        v.push(format!(
            "Jun  3 10:00:02 mx postfix/smtpd[{i}]: connect from unknown[10.{b}.{a}.2]"
        ));
        v.push(format!("Jun  3 10:00:02 mx postfix/smtpd[{i}]: NOQUEUE: reject: RCPT from unknown[10.{b}.{a}.2]: 550 5.1.1 <u{i}@mx.test>: Recipient address rejected: User unknown in virtual mailbox table; from=<> to=<u{i}@mx.test> proto=ESMTP helo=<x>"));
        v.push(format!("Jun  3 10:00:02 mx postfix/smtpd[{i}]: disconnect from unknown[10.{b}.{a}.2] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"));
        v.push(format!("Jun  3 10:00:02 mx postfix/postscreen[9]: PREGREET 11 after 0.21 from [10.{b}.{a}.3]:52311: EHLO x\\r\\n"));
        v.push(format!("2024-06-03 10:00:03 [{i}] H=(x) [10.{b}.{a}.4] F=<a@b> rejected RCPT <u{i}@example.test>: Unknown user"));
        v.push(format!("2024-06-03 10:00:03 [{i}] 1sE1Qx-000{i}-AB <= a@b.example H=(x) [10.{b}.{a}.5] P=esmtp S=1234"));
        v.push(format!("Jun  3 10:00:04 mx kernel: [{i}.0] eth0: link up"));
    }
    v
}

fn parse(c: &mut Criterion) {
    let input = lines(100_000);
    let mut g = c.benchmark_group("maillog");
    g.throughput(Throughput::Elements(input.len() as u64));
    g.sample_size(10);
    g.bench_function("1M lines", |b| {
        b.iter(|| {
            let mut r = Reader::new();
            let mut out = Vec::new();
            for l in &input {
                r.line(l, &mut out);
                // The events go on to a counter; dropping them here keeps the vector small.
                out.clear();
            }
            r.stats()
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
