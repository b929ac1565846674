//! `kedge calendar show`: a business calendar's year, month by month
//! ([`crate::config::calendar`]).

use chrono::{Datelike, NaiveDate};
use clap::{Args, Subcommand};

use super::Failure;
use crate::config::calendar::Calendar;
use crate::config::{self, Sources};

#[derive(Debug, Subcommand)]
pub enum CalendarCommand {
    /// Print a calendar's working days and holidays, month by month.
    ///
    /// Each day is its number, followed by `*` for a holiday and `-` for
    /// any other day that is not a working day (a weekend day, a day of an
    /// excluded calendar); working days have no mark. Below each month:
    /// its count of working days and its holidays.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The calendar's name (its `name`, in the calendars directory)
    pub name: String,
    /// The year to show [default: this year, in UTC]
    #[arg(long)]
    pub year: Option<i32>,
}

/// `kedge calendar`.
pub(super) fn calendar(src: &Sources, command: CalendarCommand) -> Result<(), Failure> {
    let CalendarCommand::Show(args) = command;
    let daemon = config::load_daemon(src)?;
    let cal = daemon.calendars.get(&args.name).map_err(|e| {
        let problems = &daemon.calendars.problems;
        if problems.is_empty() {
            Failure::Input(e)
        } else {
            Failure::Input(format!("{e}\n{}", problems.to_string().trim_end()))
        }
    })?;
    let year = args
        .year
        .unwrap_or_else(|| crate::clock::Clock::system().now().year());
    if NaiveDate::from_ymd_opt(year, 1, 1).is_none() || !(1..=9999).contains(&year) {
        return Err(Failure::Input(format!(
            "--year: {year} is not a year kedge can show (1 to 9999)"
        )));
    }
    print!("{}", render_year(&cal, year));
    Ok(())
}

/// The year as printed: a heading, then each month as a `cal`-like grid.
pub fn render_year(cal: &Calendar, year: i32) -> String {
    let mut out = format!(
        "calendar {} ({}), {year}: working days {}\n\
         legend: N working day, N* holiday, N- not a working day\n",
        cal.name,
        cal.file.display(),
        cal.working_days,
    );
    let mut total = 0;
    for month in 1..=12 {
        let (text, working) = render_month(cal, year, month);
        out.push('\n');
        out.push_str(&text);
        total += working;
    }
    out.push_str(&format!("\n{total} working days in {year}\n"));
    out
}

fn render_month(cal: &Calendar, year: i32, month: u32) -> (String, usize) {
    let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
        return (String::new(), 0);
    };
    let mut out = format!("{}\n Mo  Tu  We  Th  Fr  Sa  Su\n", first.format("%B %Y"));
    let mut line = "    ".repeat(first.weekday().num_days_from_monday() as usize);
    let mut working = 0;
    let mut holidays = Vec::new();
    for d in first.iter_days().take_while(|d| d.month() == month) {
        let mark = if cal.is_working(d) {
            working += 1;
            ' '
        } else if cal.is_holiday(d) {
            holidays.push(d.format("%d %a").to_string());
            '*'
        } else {
            '-'
        };
        line.push_str(&format!("{:>3}{mark}", d.day()));
        if d.weekday() == chrono::Weekday::Sun {
            out.push_str(line.trim_end());
            out.push('\n');
            line.clear();
        }
    }
    if !line.trim().is_empty() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("  {working} working days"));
    if !holidays.is_empty() {
        out.push_str(&format!("; holidays: {}", holidays.join(", ")));
    }
    out.push('\n');
    (out, working)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::calendar::Calendars;

    #[test]
    fn a_month_reads_like_cal_with_marks() {
        let cals = Calendars::from_texts(&[(
            "calendars/bank.yaml",
            "name: bank\nholidays: [2026-12-25]\n",
        )]);
        let (text, working) = render_month(&cals.get("bank").unwrap(), 2026, 12);
        assert_eq!(
            text,
            "December 2026
 Mo  Tu  We  Th  Fr  Sa  Su
      1   2   3   4   5-  6-
  7   8   9  10  11  12- 13-
 14  15  16  17  18  19- 20-
 21  22  23  24  25* 26- 27-
 28  29  30  31
  22 working days; holidays: 25 Fri
"
        );
        assert_eq!(working, 22);
    }
}
