//! The report on a recorded trace (no device needed) and on a program traced here.

use super::*;

/// A trace as vkhmm writes it: two launch sites, faults on the first one's buffer.
const RECORDED: &str = r#"[
{"name":"process_name","ph":"M","pid":1,"args":{"name":"vkhmm"}},
{"name":"thread_name","ph":"M","pid":1,"tid":7,"args":{"name":"main 7"}},
{"name":"launch main","cat":"launch","ph":"X","pid":1,"tid":7,"ts":10.0,"dur":50.0,"args":{"site":"src/a.rs:10","kernel":"main","groups":[1,1]}},
{"name":"to device","cat":"move","ph":"X","pid":1,"tid":7,"ts":11.0,"dur":5.0,"args":{"site":"src/a.rs:10","addr":"0x1000","len":8192,"alloc":"0x1000","alloc_len":8192,"bytes":8192,"path":"Direct"}},
{"name":"fault","cat":"fault","ph":"X","pid":1,"tid":7,"ts":70.0,"dur":30.0,"args":{"site":"src/a.rs:10","addr":"0x1000","len":4096,"alloc":"0x1000","alloc_len":8192,"write":false}},
{"name":"to host (fault)","cat":"move","ph":"X","pid":1,"tid":8,"ts":71.0,"dur":0.0,"args":{"site":"src/a.rs:10","addr":"0x1000","len":4096,"alloc":"0x1000","alloc_len":8192,"bytes":4096,"cause":"fault"}},
{"name":"launch main","cat":"launch","ph":"X","pid":1,"tid":7,"ts":120.0,"dur":40.0,"args":{"site":"src/b.rs:20","kernel":"main","groups":[1,1]}},
{"name":"to device","cat":"move","ph":"X","pid":1,"tid":7,"ts":121.0,"dur":1.0,"args":{"site":"src/b.rs:20","addr":"0x1000","len":4096,"alloc":"0x1000","alloc_len":8192,"bytes":4096,"path":"Direct"}},
{"name":"copy through in","cat":"copy","ph":"X","pid":1,"tid":7,"ts":122.0,"dur":1.0,"args":{"site":"src/b.rs:20","addr":"0x9000","len":100,"bytes":100,"binding":1}},
{"name":"trace end","ph":"i","s":"g","pid":1,"tid":0,"ts":200.0,"args":{"dropped_events":0}}
]"#;

#[test]
fn a_recorded_trace_is_ranked_and_explained() {
    let t = Trace::parse(RECORDED).unwrap();
    let a = analyze(&t);
    assert_eq!(a.totals.launches, 2);
    assert_eq!(a.totals.to_device, 12288);
    assert_eq!(a.totals.to_host, 4096);
    assert_eq!(a.totals.copied, 100);
    assert_eq!(a.totals.faults, 1);
    assert_eq!(a.sites[0].site, "src/a.rs:10");
    assert_eq!(a.sites[0].moved(), 12288);
    assert_eq!(a.bounces.len(), 1, "sent, faulted home, sent again");
    assert_eq!(a.bounces[0].site.as_deref(), Some("src/b.rs:20"));
    let h = hints(&a);
    assert!(
        h[0].contains("src/a.rs:10") && h[0].contains("1 chunks"),
        "{h:?}"
    );
    assert!(
        h.iter()
            .any(|x| x.contains("copied through at src/b.rs:20")),
        "{h:?}"
    );
    let report = text(&t, &a, 5);
    assert!(
        report.contains("call sites by bytes moved:\n  src/a.rs:10"),
        "{report}"
    );
    let svg = svg::draw(&t, &a);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("main 7"));
}

#[test]
fn a_file_cut_off_mid_array_is_an_error_not_a_panic() {
    assert!(Trace::parse(&RECORDED[..RECORDED.len() / 2]).is_err());
}

/// A program with one clearly worst line: the report ranks it first, by bytes and by wait.
#[test]
fn the_report_ranks_the_worst_call_site_of_a_traced_program_first() {
    use vkhmm::{shaders, Push, Runtime};
    let file = std::env::temp_dir().join(format!("vkhmm-report-test-{}.json", std::process::id()));
    let rt = match Runtime::builder().trace(&file).build() {
        Ok(rt) => rt,
        Err(e @ (vkhmm::Error::NoLoader(_) | vkhmm::Error::NoDevice { .. }))
            if std::env::var_os("CI").is_none() =>
        {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("cannot create a runtime: {e}"),
    };
    let fill = rt.kernel_wgsl(shaders::FILL_INDEX_WGSL, "main").unwrap();
    let (big, small) = (4 << 20, 16 << 10);
    let mut a = rt.alloc::<u32>(big).unwrap();
    let mut b = rt.alloc::<u32>(small).unwrap();
    let worst = line!() + 1;
    rt.launch(&fill, [1024, 1, 1], (&mut a, Push(&[big as u32, 1, 0])))
        .unwrap();
    rt.launch(&fill, [64, 1, 1], (&mut b, Push(&[small as u32, 1, 0])))
        .unwrap();
    let sum = |v: &[u32]| v.iter().fold(0u32, |s, &x| s.wrapping_add(x));
    assert_eq!(sum(&a), sum(&(0..big as u32).collect::<Vec<_>>()));
    assert_eq!(sum(&b), sum(&(0..small as u32).collect::<Vec<_>>()));
    drop(rt);
    let t = Trace::load(&file).unwrap();
    let an = analyze(&t);
    let want = format!("{}:{worst}", file!());
    assert_eq!(an.sites[0].site, want, "{}", text(&t, &an, 5));
    let mut by_wait: Vec<&SiteSum> = an.sites.iter().filter(|s| s.faults > 0).collect();
    by_wait.sort_by(|x, y| y.wait_us.total_cmp(&x.wait_us));
    assert_eq!(by_wait[0].site, want, "{}", text(&t, &an, 5));
    assert!(hints(&an)[0].contains(&want), "{:?}", hints(&an));
    let _ = std::fs::remove_file(&file);
}
