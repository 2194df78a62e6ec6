using System.Globalization;
using Treaty.Core.Model;

namespace Treaty.Cli.Bench;

/// <summary>What <c>treaty bench</c> was asked to run, every flag checked.</summary>
/// <param name="Protocol">saga, tcc, 2pc, 3pc or msg.</param>
/// <param name="Branches">Branches per transaction (and participant calls per baseline operation).</param>
/// <param name="Concurrency">Clients, each with one transaction in flight.</param>
/// <param name="Duration">The measured window.</param>
/// <param name="Warmup">Load before the window, not measured.</param>
/// <param name="Store">sqlite or postgres.</param>
/// <param name="ConnectionString">The PostgreSQL store's connection string (postgres only).</param>
/// <param name="Peer">The peer to compare with (<c>masstransit</c>), or null.</param>
/// <param name="PeerProject">The peer's project file, found from the current directory (with <paramref name="Peer"/> only).</param>
/// <param name="RabbitMq">The broker for the peer, or null.</param>
/// <param name="JsonFile">Where the results go as JSON (absolute), or null.</param>
/// <param name="Coordinators">Coordinator instances on the one PostgreSQL store (1 with SQLite).</param>
/// <param name="InFlight">Sagas to hold in flight at once after the measured window (0: none).</param>
internal sealed record BenchSettings(
    string Protocol, int Branches, int Concurrency, TimeSpan Duration, TimeSpan Warmup,
    string Store, string? ConnectionString, string? Peer, string? PeerProject, string? RabbitMq, string? JsonFile, int Coordinators = 1,
    int InFlight = 0)
{
    /// <summary>Most sagas <c>--in-flight</c> holds.</summary>
    public const int MaxInFlight = 100_000;

    /// <summary>The warm-up when <c>--warmup</c> is not given, for each coordinator started.</summary>
    public static readonly TimeSpan DefaultWarmupPerCoordinator = TimeSpan.FromSeconds(20);

    /// <summary>Most coordinator instances a bench starts (<c>--coordinators</c>).</summary>
    public const int MaxCoordinators = 8;

    public static readonly string[] Protocols = ["saga", "tcc", "2pc", "3pc", "msg"];
    public static readonly string[] Stores = ["sqlite", "postgres"];
    public static readonly string[] Peers = ["masstransit"];

    public const int MaxConcurrency = 4096;

    /// <summary>Where the peer lives in a clone of the repository, relative to its root.</summary>
    public static readonly string PeerProjectPath = Path.Combine("bench", "Treaty.Bench.Peer", "Treaty.Bench.Peer.csproj");

    /// <summary>The flags as typed (null when not given).</summary>
    internal sealed record Raw(
        string? Protocol = null, string? Branches = null, string? Concurrency = null, string? Duration = null, string? Warmup = null,
        string? Store = null, string? ConnectionString = null, string? Peer = null, string? RabbitMq = null, string? Json = null,
        string? Coordinators = null, string? InFlight = null);

    /// <summary>The settings the flags describe, or the usage error that names the flag at fault.</summary>
    /// <param name="raw">The flags as typed.</param>
    /// <param name="currentDirectory">Where relative paths start and where the search for the peer's project begins.</param>
    public static (BenchSettings? Settings, string? Error) Parse(Raw raw, string currentDirectory)
    {
        var protocol = raw.Protocol ?? "saga";
        if (!Protocols.Contains(protocol))
        {
            return Fail($"--protocol must be one of {string.Join(", ", Protocols)}, not '{protocol}'.");
        }

        if (!TryCount(raw.Branches, 3, TreatyDefaults.MaxBranches, out var branches))
        {
            return Fail($"--branches must be a whole number from 1 to {TreatyDefaults.MaxBranches}, not '{raw.Branches}'.");
        }

        if (!TryCount(raw.Concurrency, 64, MaxConcurrency, out var concurrency))
        {
            return Fail($"--concurrency must be a whole number from 1 to {MaxConcurrency}, not '{raw.Concurrency}'.");
        }

        var duration = TimeSpan.FromSeconds(10);
        if (raw.Duration is not null && (!DurationText.TryParse(raw.Duration, out duration) || duration < TimeSpan.FromSeconds(1)))
        {
            return Fail($"--duration must be a duration of at least 1s, such as 10s or 1m, not '{raw.Duration}'.");
        }

        // The coordinator is a fresh process: its JIT tiers the hot path up for about half a minute
        // (after 5 s the JIT and the runtime still took 20-55 % of its CPU), and the figures are for
        // a coordinator that has been running. "0" is none; without --warmup the default is set
        // below, once the coordinators are known.
        var warmup = TimeSpan.Zero;
        if (raw.Warmup is not null && raw.Warmup.Trim() is not ("0" or "0s") && !DurationText.TryParse(raw.Warmup, out warmup))
        {
            return Fail($"--warmup must be a duration such as 3s, 500ms or 0, not '{raw.Warmup}'.");
        }

        var store = raw.Store ?? "sqlite";
        if (!Stores.Contains(store))
        {
            return Fail($"--store must be sqlite or postgres, not '{store}'.");
        }

        if (store == "postgres" && string.IsNullOrWhiteSpace(raw.ConnectionString))
        {
            return Fail("--store postgres needs --connection-string, e.g. \"Host=127.0.0.1;Port=5432;Username=treaty;Database=treaty\".");
        }

        if (store == "sqlite" && raw.ConnectionString is not null)
        {
            return Fail("--connection-string is for --store postgres; add --store postgres, or leave --connection-string out.");
        }

        if (raw.Peer is not null && !Peers.Contains(raw.Peer))
        {
            return Fail($"--peer must be {string.Join(" or ", Peers)}, not '{raw.Peer}'.");
        }

        if (raw.RabbitMq is not null)
        {
            if (raw.Peer is null)
            {
                return Fail("--rabbitmq is the broker of --peer masstransit; add --peer masstransit, or leave --rabbitmq out.");
            }

            if (!Uri.TryCreate(raw.RabbitMq, UriKind.Absolute, out var broker) || broker.Scheme is not ("amqp" or "amqps"))
            {
                return Fail($"--rabbitmq: '{raw.RabbitMq}' is not an absolute amqp:// or amqps:// URL.");
            }
        }

        string? json = null;
        if (raw.Json is not null)
        {
            if (string.IsNullOrWhiteSpace(raw.Json))
            {
                return Fail("--json needs a file name.");
            }

            json = Path.GetFullPath(raw.Json, currentDirectory);
            if (Directory.Exists(json))
            {
                return Fail($"--json: '{raw.Json}' is a directory; give a file name.");
            }

            if (!Directory.Exists(Path.GetDirectoryName(json)))
            {
                return Fail($"--json: the directory of '{raw.Json}' does not exist.");
            }
        }

        if (!TryCount(raw.Coordinators, 1, MaxCoordinators, out var coordinators))
        {
            return Fail($"--coordinators must be a whole number from 1 to {MaxCoordinators}, not '{raw.Coordinators}'.");
        }

        if (coordinators > 1 && store != "postgres")
        {
            return Fail("--coordinators above 1 needs --store postgres: several instances share one PostgreSQL database (a SQLite file is one process's).");
        }

        if (raw.Warmup is null)
        {
            // Each of N coordinators gets 1/N of the load, so its hot methods reach the JIT's call
            // counts N times later: with three on two cores and 20 s, the JIT still took a third of
            // the machine in some windows (docs/benchmarks.md). 20 s per coordinator.
            warmup = DefaultWarmupPerCoordinator * coordinators;
        }

        var inFlight = 0;
        if (raw.InFlight is not null && !TryCount(raw.InFlight, 0, MaxInFlight, out inFlight))
        {
            return Fail($"--in-flight must be a whole number from 1 to {MaxInFlight:N0}, not '{raw.InFlight}'.");
        }

        string? peerProject = null;
        if (raw.Peer is not null)
        {
            peerProject = FindPeerProject(currentDirectory);
            if (peerProject is null)
            {
                return Fail($"--peer {raw.Peer} needs a clone of the Treaty repository: {PeerProjectPath} was not found in '{currentDirectory}' or any directory above it; run the command from inside the clone.");
            }
        }

        return (new BenchSettings(protocol, branches, concurrency, duration, warmup, store, raw.ConnectionString, raw.Peer, peerProject, raw.RabbitMq, json, coordinators, inFlight), null);

        static (BenchSettings?, string?) Fail(string error) => (null, error);
    }

    /// <summary>The peer's project file in <paramref name="start"/> or the nearest directory above it that has one.</summary>
    public static string? FindPeerProject(string start)
    {
        for (var directory = new DirectoryInfo(start); directory is not null; directory = directory.Parent)
        {
            var candidate = Path.Combine(directory.FullName, PeerProjectPath);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static bool TryCount(string? text, int fallback, int max, out int value)
    {
        if (text is null)
        {
            value = fallback;
            return true;
        }

        return int.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out value) && value >= 1 && value <= max;
    }
}
