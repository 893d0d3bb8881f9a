//! The dashboard: server-rendered HTML over what the store knows (series,
//! their patches, test matrix, report) and a live view of the bus. Pages are
//! plain HTML with one stylesheet; JavaScript only where it earns its place:
//! the live stream (EventSource) and the admin buttons (fetch with the token
//! kept in the browser). Everything here is public and read-only; admin
//! actions go through the authenticated API.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

pub use patchbay_model::view::{
    Cell, PatchRow, RecheckRow, RunnerRow, SeriesFilter, SeriesRow, SeriesView, SourceRow, TestStats, TrendRow,
};

/// A page's data, or why not.
pub type PageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Where the dashboard reads (the binary implements it over the store).
pub trait Pages: Send + Sync + 'static {
    /// Series newest first, as `filter` narrows them; and how many match.
    fn series_list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> PageFuture<'_, (Vec<SeriesRow>, u64)>;
    /// One series.
    fn series(&self, id: i64) -> PageFuture<'_, Option<SeriesView>>;
    /// One mail as stored.
    fn raw_mail(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>>;
    /// A series' patches as one mbox, ready for `git am`.
    fn series_mbox(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>>;
    /// Runners heard from lately.
    fn runners(&self) -> PageFuture<'_, Vec<RunnerRow>>;
    /// Each test's record over its history.
    fn tests(&self) -> PageFuture<'_, Vec<TestStats>>;
    /// The public-inbox archives followed, as their followers last said.
    fn sources(&self) -> PageFuture<'_, Vec<SourceRow>>;
    /// The series posted since `since` (unix seconds) as the trends see them, and each test's record.
    fn trend_data(&self, since: i64) -> PageFuture<'_, (Vec<TrendRow>, Vec<TestStats>)>;
}

/// HTML-escapes text.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

const STYLE: &str = r#"
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#fff; --head:#f6f8fa; --pass:#1a7f37; --fail:#cf222e; --warn:#9a6700; --run:#0969da; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6edf3; --muted:#8d96a0; --line:#30363d; --bg:#0d1117; --head:#161b22; --pass:#3fb950; --fail:#f85149; --warn:#d29922; --run:#58a6ff; } }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; gap:1.2em; align-items:center; flex-wrap:wrap; padding:.6em 1em; border-bottom:1px solid var(--line); background:var(--head); }
header b { font-size:1.1em; } header a { color:var(--fg); text-decoration:none; } header a:hover { text-decoration:underline; }
main { padding:1em; max-width:1200px; margin:0 auto; }
a { color:var(--run); }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:.35em .5em; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:.9em; }
.muted { color:var(--muted); font-size:.9em; }
.badge { display:inline-block; padding:0 .5em; border-radius:1em; font-size:.8em; font-weight:600; border:1px solid currentColor; white-space:nowrap; }
.PASSED { color:var(--pass); } .FAILED, .ERROR { color:var(--fail); } .INCOMPLETE, .NEEDS_INSPECTION { color:var(--warn); } .RUNNING, .QUEUED, .pending { color:var(--run); }
form.search { display:flex; gap:.5em; margin-bottom:1em; } input { font:inherit; padding:.3em .5em; border:1px solid var(--line); border-radius:6px; background:var(--bg); color:var(--fg); }
input[type=search] { flex:1; } button { font:inherit; padding:.25em .7em; border:1px solid var(--line); border-radius:6px; background:var(--head); color:var(--fg); cursor:pointer; }
pre { background:var(--head); padding:.8em; overflow:auto; border-radius:6px; font-size:13px; line-height:1.35; }
#events li { font-family:ui-monospace,monospace; font-size:13px; border-bottom:1px solid var(--line); padding:.25em 0; list-style:none; word-break:break-all; }
#events { padding:0; }
.matrix td.cell { white-space:nowrap; }
@media (max-width: 700px) { .wide { display:none; } main { padding:.5em; } }
"#;

/// A whole page around `body`.
pub fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · patchbay</title><style>{STYLE}</style></head><body>\
         <header><b><a href=\"/\">patchbay</a></b><a href=\"/\">Series</a><a href=\"/live\">Live</a><a href=\"/runners\">Runners</a><a href=\"/tests\">Tests</a><a href=\"/sources\">Sources</a><a href=\"/trends\">Trends</a>\
         <a href=\"/api/openapi.json\">API</a></header><main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// "3 min ago"-style age of a unix time.
pub fn age(then: i64, now: i64) -> String {
    let d = (now - then).max(0);
    match d {
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86_399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

fn badge(word: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(word))
}

/// The series list.
pub fn series_list(rows: &[SeriesRow], total: u64, search: Option<&str>, page: u32, per_page: u32, now: i64) -> String {
    let mut b = String::new();
    let shown = search.unwrap_or("");
    let _ = write!(
        b,
        "<h1>Series</h1><form class=\"search\" method=\"get\" action=\"/\"><input type=\"search\" name=\"q\" value=\"{}\" \
         placeholder=\"Title or submitter\" aria-label=\"Search series\"><button>Search</button></form>",
        esc(shown)
    );
    if rows.is_empty() {
        match search {
            Some(q) => {
                let _ = write!(b, "<p class=\"muted\" id=\"no-match\">No series matches “{}”. <a href=\"/\">All series</a></p>", esc(q));
            }
            None if total > 0 => b.push_str("<p class=\"muted\">No series on this page. <a href=\"/\">First page</a></p>"),
            None => b.push_str("<p class=\"muted\">No series yet.</p>"),
        }
    } else {
        b.push_str("<table><thead><tr><th>Series</th><th class=\"wide\">Project</th><th class=\"wide\">Submitter</th><th>Verdict</th><th class=\"wide\">Age</th></tr></thead><tbody>");
        for r in rows {
            let verdict = match &r.verdict {
                Some(v) => badge(v.as_str()),
                None if r.state == "complete" => "<span class=\"badge pending\">testing</span>".into(),
                None => format!("<span class=\"muted\">{}</span>", esc(&r.state)),
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"/series/{}\">{}</a> <span class=\"muted\">v{} · {} patch{}</span></td><td class=\"wide\">{}</td>\
                 <td class=\"wide\">{}</td><td>{verdict}</td><td class=\"wide muted\">{}</td></tr>",
                r.id,
                esc(&r.name),
                r.version,
                r.total,
                if r.total == 1 { "" } else { "es" },
                esc(r.project.as_deref().unwrap_or("—")),
                esc(&r.submitter),
                age(r.created_at, now)
            );
        }
        b.push_str("</tbody></table>");
    }
    let pages = total.div_ceil(u64::from(per_page.max(1))).max(1);
    let q = search.map(|s| format!("&q={}", enc(s))).unwrap_or_default();
    let _ = write!(b, "<p class=\"muted\">{total} series · page {page} of {pages}");
    if page > 1 {
        let _ = write!(b, " · <a href=\"/?page={}{q}\">newer</a>", page - 1);
    }
    if u64::from(page) < pages {
        let _ = write!(b, " · <a href=\"/?page={}{q}\">older</a>", page + 1);
    }
    b.push_str("</p>");
    layout("Series", &b)
}

/// The admin script: the token lives in the browser (localStorage), and each action says what the server answered.
/// Admin buttons are rendered `hidden` and shown once a token is entered or kept: an anonymous
/// visitor sees no button that can only fail.
const ADMIN_JS: &str = r#"
<script>
const tokenInput = document.getElementById('token');
tokenInput.value = localStorage.getItem('patchbay-token') || '';
const showAdmin = () => { for (const b of document.querySelectorAll('button[data-action]')) b.hidden = tokenInput.value === ''; };
const keepToken = () => { localStorage.setItem('patchbay-token', tokenInput.value); showAdmin(); };
tokenInput.addEventListener('change', keepToken);
tokenInput.addEventListener('input', keepToken);
showAdmin();
for (const button of document.querySelectorAll('button[data-action]')) {
  button.addEventListener('click', async () => {
    const out = document.getElementById('admin-result');
    const body = button.dataset.body ? button.dataset.body : '{}';
    const response = await fetch(button.dataset.action, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Authorization': 'Bearer ' + tokenInput.value }, body });
    const text = await response.text();
    let message = text;
    try { const j = JSON.parse(text); message = j.error || j.status || text; } catch (e) {}
    out.textContent = (response.ok ? 'Done: ' : 'Refused (' + response.status + '): ') + message;
    out.className = response.ok ? 'PASSED' : 'FAILED';
  });
}
</script>"#;

/// The series page.
pub fn series_page(v: &SeriesView, now: i64) -> String {
    let s = &v.series;
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>{}</h1><p class=\"muted\">v{} · {} · {} · {} · <a href=\"/series/{}/mbox\">mbox</a></p>",
        esc(&s.name),
        s.version,
        esc(s.project.as_deref().unwrap_or("no project")),
        esc(&s.submitter),
        age(s.created_at, now),
        s.id
    );
    let verdict = match &s.verdict {
        Some(word) => badge(word.as_str()),
        None => format!("<span class=\"badge pending\">{}</span>", esc(if s.state == "complete" { "testing" } else { &s.state })),
    };
    let _ = write!(b, "<p id=\"verdict\">Verdict: {verdict}");
    if let Some(d) = &v.verdict_detail {
        let _ = write!(b, " <span class=\"muted\">{}</span>", esc(d));
    }
    b.push_str("</p>");
    if v.versions.len() > 1 {
        b.push_str("<p>Versions: ");
        let links: Vec<String> = v
            .versions
            .iter()
            .map(|(id, ver)| if *id == s.id { format!("<b>v{ver}</b>") } else { format!("<a href=\"/series/{id}\">v{ver}</a>") })
            .collect();
        b.push_str(&links.join(" → "));
        b.push_str("</p>");
    }
    b.push_str("<h2>Tests</h2>");
    if v.cells.is_empty() {
        b.push_str("<p class=\"muted\">No results yet.</p>");
    } else {
        b.push_str("<table class=\"matrix\" id=\"matrix\"><thead><tr><th>Test</th><th>Arch</th><th>Outcome</th><th class=\"wide\">Time</th><th>Log</th><th>Admin</th></tr></thead><tbody>");
        for c in &v.cells {
            let reason = c.reason.as_ref().map(|r| format!(" <span class=\"muted\">{}</span>", esc(r.as_str()))).unwrap_or_default();
            let waived = if c.waived { " <span class=\"muted\">(waived)</span>" } else { "" };
            let waive = if c.outcome.fails() && !c.waived {
                format!(
                    " <button hidden data-action=\"/api/v1/results/{}/waive\" data-body=\"{}\">Waive</button>",
                    c.result_id,
                    esc("{\"comment\":\"waived from the dashboard\"}")
                )
            } else {
                String::new()
            };
            let _ = write!(
                b,
                "<tr data-test=\"{}\" data-arch=\"{}\"><td>{}</td><td>{}</td><td class=\"cell\">{}{reason}{waived}</td><td class=\"wide muted\">{}</td>\
                 <td><a href=\"/logs/{}\">log</a></td><td><button hidden data-action=\"/api/v1/jobs/{}/rerun\">Re-run</button>{waive}</td></tr>",
                esc(&c.test),
                esc(&c.arch),
                esc(&c.test),
                esc(&c.arch),
                badge(c.outcome.as_str()),
                // As the report writes it: one function for both.
                patchbay_verdict::duration(patchbay_verdict::seconds_of(c.duration_ms.max(0) as u64)),
                enc(&c.job),
                enc(&c.job)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("<h2>Patches</h2><ol start=\"0\">");
    for p in &v.patches {
        let _ = write!(b, "<li><a href=\"/mails/{}/raw\">{}</a></li>", p.mail_id, esc(&p.subject));
    }
    b.push_str("</ol><h2>Report</h2>");
    match &v.report {
        None => b.push_str("<p class=\"muted\">No report yet.</p>"),
        Some((state, detail)) => {
            let _ = write!(b, "<p id=\"report\">{}", esc(state));
            if let Some(d) = detail {
                let _ = write!(b, " <span class=\"muted\">{}</span>", esc(d));
            }
            let _ = write!(b, " <button hidden data-action=\"/api/v1/reports/{}/{}/resend\">Re-send</button></p>", s.id, s.version);
            if let Some(text) = &v.report_text {
                let _ = write!(b, "<pre id=\"report-text\">{}</pre>", esc(text));
            }
        }
    }
    if !v.rechecks.is_empty() {
        b.push_str("<h2>Re-tests asked</h2><table id=\"rechecks\"><thead><tr><th>By</th><th>Answer</th><th>When</th></tr></thead><tbody>");
        for r in &v.rechecks {
            let answer = match (&r.refused, r.round) {
                (Some(why), _) => format!("<span class=\"badge fail\">refused</span> {}", esc(why)),
                (None, Some(n)) => format!("round {n}: {}", esc(&r.recheck.join(", "))),
                (None, None) => String::new(),
            };
            let _ = write!(b, "<tr><td>{}</td><td>{answer}</td><td class=\"muted\">{}</td></tr>", esc(&r.by), age(r.at, now));
        }
        b.push_str("</tbody></table>");
    }
    b.push_str(
        "<h2>Admin</h2><p><label>Admin token <input id=\"token\" type=\"password\" autocomplete=\"off\"></label> \
         <span class=\"muted\">(from <code>http.admin_tokens</code>; kept in this browser; shows the Re-run, Waive and Re-send buttons)</span></p>\
         <p id=\"admin-result\" role=\"status\"></p>",
    );
    b.push_str(ADMIN_JS);
    layout(&s.name, &b)
}

/// The live stream: the recent past (the stream from `start`, a log position a little before
/// the head), then every message as it is published, filtered by topic pattern.
pub fn live_page(filter: Option<&str>, start: u64) -> String {
    let f = filter.unwrap_or("#");
    let body = format!(
        "<h1>Live</h1><form class=\"search\" method=\"get\" action=\"/live\"><input type=\"search\" name=\"topic\" value=\"{}\" \
         aria-label=\"Topic pattern\" placeholder=\"Topic pattern, such as *.*.ci.#\"><button>Filter</button></form>\
         <p class=\"muted\" id=\"state\">Connecting…</p><ul id=\"events\"></ul>\
         <script>
const list = document.getElementById('events');
const state = document.getElementById('state');
const source = new EventSource('/api/v1/stream?after={start}&topic=' + encodeURIComponent({}));
source.addEventListener('ready', () => {{ state.textContent = 'Live: the recent past, then new messages at the top as they come.'; }});
source.onerror = () => {{ state.textContent = 'Disconnected; reconnecting…'; }};
source.onmessage = (e) => {{
  let m; try {{ m = JSON.parse(e.data); }} catch (err) {{ return; }}
  const li = document.createElement('li');
  li.textContent = m.sent_at + '  ' + m.topic + '  ' + m.sender.service + ':' + m.sender.instance + '#' + m.seq + '  ' + JSON.stringify(m.body).slice(0, 200);
  list.prepend(li);
  while (list.children.length > 500) list.lastChild.remove();
}};
</script>",
        esc(f),
        // JSON in a script: `</` would end the script early.
        serde_json::to_string(f).unwrap_or_else(|_| "\"#\"".into()).replace("</", "<\\/")
    );
    layout("Live", &body)
}

/// Renders ANSI colours as spans (or drops other escape sequences), escaping everything else.
pub fn ansi_to_html(text: &str) -> String {
    ansi_piece(text, &mut None)
}

/// [`ansi_to_html`] for one piece of a longer text: `style` is the colour still on from the
/// piece before, and is left as the colour still on at the end of this one.
pub fn ansi_piece(text: &str, style: &mut Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open = false;
    if let Some(s) = style.as_ref() {
        out.push_str(s);
        open = true;
    }
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                c => out.push(c),
            }
            continue;
        }
        if chars.peek() != Some(&'[') {
            continue;
        }
        chars.next();
        let mut params = String::new();
        let mut end = ' ';
        for d in chars.by_ref() {
            if d.is_ascii_digit() || d == ';' {
                params.push(d);
            } else {
                end = d;
                break;
            }
        }
        if end != 'm' {
            continue; // cursor movement and the like: dropped
        }
        if open {
            out.push_str("</span>");
            open = false;
            *style = None;
        }
        let colour = params.split(';').filter_map(|p| p.parse::<u8>().ok()).find_map(|n| match n {
            31 | 91 => Some("var(--fail)"),
            32 | 92 => Some("var(--pass)"),
            33 | 93 => Some("var(--warn)"),
            34 | 94 | 36 | 96 => Some("var(--run)"),
            35 | 95 => Some("#a371f7"),
            _ => None,
        });
        let bold = params.split(';').any(|p| p == "1");
        if colour.is_some() || bold {
            let tag = format!(
                "<span style=\"{}{}\">",
                colour.map(|c| format!("color:{c};")).unwrap_or_default(),
                if bold { "font-weight:600" } else { "" }
            );
            out.push_str(&tag);
            *style = Some(tag);
            open = true;
        }
    }
    if open {
        out.push_str("</span>");
    }
    out
}

/// Bytes of log per piece of the streamed log page.
const LOG_PIECE: usize = 64 << 10;

/// The log viewer, as pieces to stream: the page head, the log in pieces of about 64 KiB cut
/// at line ends (colours carried across), the page end. A browser shows the start of a large
/// log while the rest arrives.
pub fn log_page_pieces(job: &str, text: String, complete: bool) -> impl Iterator<Item = String> + Send + 'static {
    let page = layout(job, "\u{0}");
    let (head, tail) = page.split_once('\u{0}').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
    let back = match job_parts(job) {
        Some((series, version, test, arch)) => format!(
            "<p id=\"back\">Test <a href=\"/series/{series}#matrix\">{}</a> on {} of <a href=\"/series/{series}\">series {series} v{version}</a></p>",
            esc(test),
            esc(arch)
        ),
        None => String::new(),
    };
    let head = format!(
        "{head}<h1>Log of {}</h1>{back}<p class=\"muted\">{} · {} bytes · <a href=\"/api/v1/logs/{}\">plain text</a></p><pre id=\"log\">",
        esc(job),
        if complete { "complete" } else { "still arriving" },
        text.len(),
        enc(job)
    );
    let mut style = None;
    let mut rest = text;
    let mut pieces = Vec::new();
    while !rest.is_empty() {
        let mut cut = rest.len().min(LOG_PIECE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut < rest.len()
            && let Some(nl) = rest[..cut].rfind('\n')
        {
            cut = nl + 1;
        }
        let piece: String = rest.drain(..cut).collect();
        // ansi_piece closes a colour still on at its end and hands it to the next piece.
        pieces.push(ansi_piece(&piece, &mut style));
    }
    std::iter::once(head).chain(pieces).chain(std::iter::once(format!("</pre>{tail}")))
}

/// A job id's parts, `<series>-v<version>-<test>-<arch>` (the dispatcher's stable ids; an arch
/// has no `-`), so a log page links back to its series and test; `None` for other ids.
pub fn job_parts(job: &str) -> Option<(i64, u32, &str, &str)> {
    let (series, rest) = job.split_once("-v")?;
    let (version, rest) = rest.split_once('-')?;
    let (test, arch) = rest.rsplit_once('-')?;
    let series = series.parse().ok().filter(|s| *s > 0)?;
    (!test.is_empty() && !arch.is_empty()).then_some((series, version.parse().ok()?, test, arch))
}

/// The log viewer in one string (tests, small logs).
pub fn log_page(job: &str, text: &str, complete: bool) -> String {
    log_page_pieces(job, text.to_string(), complete).collect()
}

/// The trends page: three plots (series per week, first versions passing, time to report) by
/// project, drawn by uPlot from the same figures `GET /api/v1/trends` gives, and the slowest and
/// flakiest tests.
pub fn trends_page(t: &crate::trends::Trends) -> String {
    let data = serde_json::to_string(t).unwrap_or_else(|_| "null".into()).replace("</", "<\\/");
    let mut b = format!(
        "<link rel=\"stylesheet\" href=\"/assets/uplot.min.css\"><style>.plot{{max-width:100%;overflow-x:auto}}</style><h1>Trends</h1>\
         <p class=\"muted\">{} weeks from {} (weeks start on Monday, UTC); the figures as JSON: \
         <a href=\"/api/v1/trends?weeks={}\">/api/v1/trends</a>.</p>\
         <h2>Series posted per week</h2><div class=\"plot\" id=\"plot-series\"></div>\
         <h2>First versions passing</h2><div class=\"plot\" id=\"plot-passed\"></div>\
         <h2>Median hours from the last mail to the report</h2><div class=\"plot\" id=\"plot-report\"></div>",
        t.weeks.len(),
        esc(t.weeks.first().map_or("", String::as_str)),
        t.weeks.len()
    );
    let table = |b: &mut String, id: &str, title: &str, rows: &[crate::trends::TestFigure]| {
        let _ = write!(b, "<h2>{title}</h2>");
        if rows.is_empty() {
            b.push_str("<p class=\"muted\">None yet.</p>");
            return;
        }
        let _ = write!(
            b,
            "<table id=\"{id}\"><thead><tr><th>Test</th><th class=\"wide\">Project</th><th>Runs</th><th>Mean</th><th>Flake rate</th></tr></thead><tbody>"
        );
        for f in rows {
            let _ = write!(
                b,
                "<tr><td>{}/{}</td><td class=\"wide\">{}</td><td>{}</td><td>{:.1} s</td><td>{:.1}%</td></tr>",
                esc(&f.test),
                esc(&f.arch),
                esc(&f.project),
                f.runs,
                f.mean_secs,
                f.flake_rate
            );
        }
        b.push_str("</tbody></table>");
    };
    table(&mut b, "slowest", "Slowest tests", &t.slowest);
    table(&mut b, "flakiest", "Flakiest tests", &t.flakiest);
    let _ = write!(b, "<script id=\"trends-data\" type=\"application/json\">{data}</script>");
    b.push_str(TRENDS_JS);
    layout("Trends", &b)
}

/// Draws the trends' plots with uPlot (served from `/assets`), one line per project.
const TRENDS_JS: &str = r#"<script src="/assets/uplot.min.js"></script>
<script>
const t = JSON.parse(document.getElementById('trends-data').textContent);
const xs = t.weeks.map((w) => Date.parse(w + 'T00:00:00Z') / 1000);
const colours = ['#0969da', '#cf222e', '#1a7f37', '#8250df', '#bf8700', '#0a3069', '#953800', '#6e7781'];
function plot(id, pick, label) {
  const el = document.getElementById(id);
  const series = [{}].concat(t.projects.map((p, i) => ({ label: p.project, stroke: colours[i % colours.length], width: 2, points: { show: true } })));
  const data = [xs].concat(t.projects.map(pick));
  const width = Math.max(240, Math.min(el.parentElement.clientWidth - 16, 1100));
  new uPlot({ width, height: 240, series, axes: [{}, { label }], scales: { x: { time: true } } }, data, el);
}
plot('plot-series', (p) => p.series, 'series');
plot('plot-passed', (p) => p.first_version_passed.map((v) => (v === null ? null : 100 * v)), '% passed');
plot('plot-report', (p) => p.median_report_secs.map((v) => (v === null ? null : v / 3600)), 'hours');
</script>"#;

/// The sources page: each public-inbox archive followed, whether its last fetch worked, and
/// when the next try is after a failure.
pub fn sources_page(rows: &[SourceRow], now: i64) -> String {
    let mut b = String::from("<h1>Sources</h1>");
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No archive followed (<code>[[source]]</code>), or none has been fetched yet.</p>");
        return layout("Sources", &b);
    }
    b.push_str("<table id=\"sources\"><thead><tr><th>List</th><th class=\"wide\">Archive</th><th>State</th><th>Last worked</th></tr></thead><tbody>");
    for r in rows {
        let state = match &r.error {
            Some(e) => format!(
                "<span class=\"badge fail\">fetch failed</span> {} <span class=\"muted\">({} in a row; retrying in {} s)</span>",
                esc(e),
                r.failures,
                (r.at + r.retry_in_secs as i64 - now).max(0)
            ),
            None => "<span class=\"badge pass\">ok</span>".to_string(),
        };
        let worked = match r.last_ok {
            Some((at, stored)) => format!("{}, {stored} new", age(at, now)),
            None => "never".into(),
        };
        let _ = write!(
            b,
            "<tr data-list=\"{}\"><td>{}</td><td class=\"wide\">{}</td><td>{state}</td><td class=\"muted\">{worked}</td></tr>",
            esc(&r.list_id),
            esc(&r.list_id),
            esc(&r.repository)
        );
    }
    b.push_str("</tbody></table>");
    layout("Sources", &b)
}

/// The runners page.
pub fn runners_page(rows: &[RunnerRow], now: i64) -> String {
    let mut b = String::from("<h1>Runners</h1>");
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No runner has spoken in the last 10 minutes.</p>");
    } else {
        b.push_str(
            "<table><thead><tr><th>Runner</th><th>Capabilities</th><th>Slots</th><th>Running</th><th>Last seen</th></tr></thead><tbody>",
        );
        for r in rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"muted\">{}</td></tr>",
                esc(&r.instance),
                esc(&r.capabilities.join(", ")),
                r.jobs,
                if r.running.is_empty() { "idle".to_string() } else { r.running.iter().map(|j| esc(j)).collect::<Vec<_>>().join("<br>") },
                age(r.seen_at, now)
            );
        }
        b.push_str("</tbody></table>");
    }
    layout("Runners", &b)
}

/// The tests page: each test's runs, failures and flake rate (passes only on a re-run), the
/// flakiest first, so a maintainer sees which tests to fix or give `retries`.
pub fn tests_page(rows: &[TestStats]) -> String {
    let mut b = String::from("<h1>Tests</h1>");
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No test has run yet.</p>");
        return layout("Tests", &b);
    }
    let mut rows: Vec<&TestStats> = rows.iter().collect();
    rows.sort_by(|a, b| {
        b.flake_rate().total_cmp(&a.flake_rate()).then_with(|| (&a.project, &a.test, &a.arch).cmp(&(&b.project, &b.test, &b.arch)))
    });
    b.push_str(
        "<table id=\"tests\"><thead><tr><th class=\"wide\">Project</th><th>Test</th><th>Arch</th><th>Runs</th><th class=\"wide\">Failed</th>\
         <th class=\"wide\">Pre-existing</th><th class=\"wide\">Flaky</th><th>Flake rate</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            b,
            "<tr data-test=\"{}\"><td class=\"wide\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"wide\">{}</td><td class=\"wide\">{}</td>\
             <td class=\"wide\">{}</td><td class=\"flake-rate\">{:.1}%</td></tr>",
            esc(&format!("{}/{}/{}", r.project, r.test, r.arch)),
            esc(&r.project),
            esc(&r.test),
            esc(&r.arch),
            r.runs,
            r.failed,
            r.pre_existing,
            r.flaky,
            r.flake_rate()
        );
    }
    b.push_str("</tbody></table><p class=\"muted\">Flake rate: runs that passed only when run again (a test's <code>retries</code>), of all runs.</p>");
    layout("Tests", &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_ansi() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let html = ansi_to_html("\x1b[1;31merror:\x1b[0m <b>\x1b[2K done");
        assert_eq!(html, "<span style=\"color:var(--fail);font-weight:600\">error:</span> &lt;b&gt; done");
    }

    #[test]
    fn long_logs_stream_in_pieces_with_colours_carried() {
        let mut log = String::from("\x1b[31m");
        for i in 0..20_000 {
            log.push_str(&format!("line {i} <x>\n"));
        }
        let pieces: Vec<String> = log_page_pieces("j1", log, true).collect();
        assert!(pieces.len() > 4, "{} pieces", pieces.len());
        // Every piece of the log is red: the colour opened in the first goes on in the others.
        for p in &pieces[1..pieces.len() - 1] {
            assert!(p.starts_with("<span style=\"color:var(--fail);\">") && p.ends_with("</span>"), "{}", &p[..60]);
            assert_eq!(p.matches("<span").count(), p.matches("</span>").count(), "balanced");
        }
        let whole: String = pieces.concat();
        assert!(whole.contains("line 19999 &lt;x&gt;") && whole.ends_with("</html>\n"));
    }

    #[test]
    fn a_log_page_links_back_to_its_series_and_test() {
        assert_eq!(job_parts("12-v3-unit-tests-x86_64"), Some((12, 3, "unit-tests", "x86_64")));
        assert_eq!(job_parts("nonsense"), None);
        let html = log_page("12-v3-check-any", "ok\n", true);
        assert!(
            html.contains("<a href=\"/series/12\">series 12 v3</a>") && html.contains("<a href=\"/series/12#matrix\">check</a> on any"),
            "{html}"
        );
    }

    #[test]
    fn admin_buttons_are_hidden_until_a_token_is_given() {
        let row = SeriesRow {
            id: 3,
            project: None,
            submitter: "dev@example.org".into(),
            name: "x".into(),
            version: 1,
            total: 1,
            state: "complete".into(),
            verdict: Some("FAILED".into()),
            created_at: 0,
        };
        let cell = Cell {
            test: "check".into(),
            arch: "any".into(),
            outcome: "FAILED".into(),
            reason: None,
            duration_ms: 200,
            job: "3-v1-check-any".into(),
            result_id: 1,
            waived: false,
        };
        let view = SeriesView {
            series: row,
            patches: vec![],
            versions: vec![],
            cells: vec![cell],
            report: Some(("sent".into(), None)),
            report_text: None,
            verdict_detail: None,
            rechecks: vec![],
        };
        let html = series_page(&view, 0);
        assert_eq!(html.matches("<button hidden data-action=").count(), 3, "{html}");
        assert_eq!(html.matches("<button").count(), 3, "{html}");
    }

    #[test]
    fn a_search_that_matches_nothing_says_so() {
        let html = series_list(&[], 0, Some("nosuch"), 1, 50, 0);
        assert!(html.contains("No series matches “nosuch”") && !html.contains("No series yet"), "{html}");
        assert!(series_list(&[], 0, None, 1, 50, 0).contains("No series yet."));
    }

    #[test]
    fn pages_escape_what_mail_wrote() {
        let row = SeriesRow {
            id: 3,
            project: Some("qemu".into()),
            submitter: "dev@example.org".into(),
            name: "<script>alert(1)</script>".into(),
            version: 2,
            total: 1,
            state: "complete".into(),
            verdict: Some("FAILED".into()),
            created_at: 0,
        };
        let html = series_list(std::slice::from_ref(&row), 1, Some("a&b"), 1, 25, 120);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("value=\"a&amp;b\"") && html.contains("2 min ago"));
        let view = SeriesView {
            series: row,
            patches: vec![],
            versions: vec![],
            cells: vec![],
            report: None,
            report_text: None,
            verdict_detail: None,
            rechecks: vec![],
        };
        assert!(!series_page(&view, 0).contains("<script>alert"));
        assert_eq!(live_page(Some("\"</script><b>"), 0).matches("</script>").count(), 1, "the filter cannot end the script");
    }
}
