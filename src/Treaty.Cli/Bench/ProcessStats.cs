using System.Diagnostics;
using System.Globalization;

namespace Treaty.Cli.Bench;

/// <summary>
/// CPU time and memory of another process, from <c>/proc/PID/stat</c> (utime + stime) and
/// <c>/proc/PID/status</c> (VmRSS: the resident set; VmHWM: its peak) on Linux; from <see cref="Process"/>
/// elsewhere.
/// </summary>
internal static class ProcessStats
{
    // /proc reports CPU times in USER_HZ ticks, which the kernel fixes at 100 per second for user space.
    private const double TickMicroseconds = 10_000;

    /// <summary>User + system CPU time the process <paramref name="pid"/> has used so far.</summary>
    public static TimeSpan CpuTime(int pid)
    {
        var path = $"/proc/{pid}/stat";
        if (!File.Exists(path))
        {
            using var process = Process.GetProcessById(pid);
            return process.TotalProcessorTime;
        }

        return StatCpuTime(File.ReadAllText(path));
    }

    /// <summary>
    /// User + system CPU time so far of the threads of process <paramref name="pid"/> named
    /// <paramref name="threadName"/> (<c>/proc/PID/task/*/comm</c>); null where there is no
    /// <c>/proc</c> or no such thread. A thread that ended is not counted.
    /// </summary>
    public static TimeSpan? ThreadCpuTime(int pid, string threadName)
    {
        var tasks = $"/proc/{pid}/task";
        if (!Directory.Exists(tasks))
        {
            return null;
        }

        TimeSpan? sum = null;
        foreach (var task in Directory.EnumerateDirectories(tasks))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == threadName)
                {
                    sum = (sum ?? TimeSpan.Zero) + StatCpuTime(File.ReadAllText(Path.Combine(task, "stat")));
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // The thread ended while we looked.
            }
        }

        return sum;
    }

    private static TimeSpan StatCpuTime(string stat)
    {
        // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
        // After it: state is field 3, utime field 14 and stime field 15.
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return TimeSpan.FromMicroseconds(ticks * TickMicroseconds);
    }

    /// <summary>The peak resident set of the process <paramref name="pid"/> so far, in MiB.</summary>
    public static double PeakRssMb(int pid) => Status(pid, "VmHWM:", p => p.PeakWorkingSet64);

    /// <summary>The resident set of the process <paramref name="pid"/> now, in MiB.</summary>
    public static double RssMb(int pid) => Status(pid, "VmRSS:", p => p.WorkingSet64);

    private static double Status(int pid, string field, Func<Process, long> elsewhere)
    {
        var path = $"/proc/{pid}/status";
        if (!File.Exists(path))
        {
            using var process = Process.GetProcessById(pid);
            return elsewhere(process) / 1_048_576.0;
        }

        foreach (var line in File.ReadLines(path))
        {
            // "VmHWM:	  123456 kB"
            if (line.StartsWith(field, StringComparison.Ordinal))
            {
                var kb = long.Parse(line[field.Length..].Replace("kB", "", StringComparison.Ordinal).Trim(), CultureInfo.InvariantCulture);
                return kb / 1024.0;
            }
        }

        return 0;
    }
}
