"""python -m lcx.report DIR (see lcx.report)."""
import sys

from lcx import cli
from lcx.report import write_report


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    sys.exit("usage: python -m lcx.report DIR")
  try:
    report, table = write_report(argv[0])
  except ValueError as e:
    sys.exit(f"lcx.report: {e}")
  except OSError as e:  # the study directory not writable
    sys.exit(f"lcx.report: {cli.os_error(e)}")
  print(table)
  print(f"\nreport: {report}\nfigures: {report.parent / 'figures'}")


if __name__ == "__main__":
  main()
