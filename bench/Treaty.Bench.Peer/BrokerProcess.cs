using System.Globalization;

namespace Treaty.Bench.Peer;

/// <summary>
/// The broker's CPU time, read from /proc: the process that listens on the AMQP port (beam.smp for RabbitMQ),
/// found through /proc/net/tcp's socket inodes and the processes' open descriptors — the same for a node this program
/// started and for one given with --rabbitmq, as long as it runs on this machine and /proc/PID/fd is readable.
/// </summary>
internal sealed class BrokerProcess
{
    // USER_HZ, the unit of utime and stime in /proc/PID/stat, is 100 on every Linux architecture .NET runs on.
    private const double TicksPerSecond = 100;

    private BrokerProcess(int processId, string name)
    {
        ProcessId = processId;
        Name = name;
    }

    public int ProcessId { get; }

    /// <summary>The command name (/proc/PID/comm), e.g. beam.smp.</summary>
    public string Name { get; }

    /// <summary>The process listening on TCP <paramref name="port"/> on this machine, or null if none can be seen.</summary>
    public static BrokerProcess? Listening(int port)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            if (!File.Exists(table))
                continue;
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...; 0A is LISTEN.
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 9 && fields[3] == "0A"
                    && int.Parse(fields[1].AsSpan(fields[1].LastIndexOf(':') + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port)
                {
                    inodes.Add($"socket:[{fields[9]}]");
                }
            }
        }

        if (inodes.Count == 0)
            return null;
        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
                continue;
            try
            {
                foreach (var descriptor in Directory.EnumerateFileSystemEntries(Path.Combine(directory, "fd")))
                {
                    if (new FileInfo(descriptor).LinkTarget is { } target && inodes.Contains(target))
                        return new BrokerProcess(pid, File.ReadAllText(Path.Combine(directory, "comm")).Trim());
                }
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                // Another user's process, or one that exited meanwhile.
            }
        }

        return null;
    }

    /// <summary>User plus system CPU time the process has used so far.</summary>
    public TimeSpan CpuTime()
    {
        var stat = File.ReadAllText($"/proc/{ProcessId}/stat");
        // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
        // Field 3 (state) is the first after it, so utime (14) and stime (15) are the 12th and 13th.
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds(ticks / TicksPerSecond);
    }
}
