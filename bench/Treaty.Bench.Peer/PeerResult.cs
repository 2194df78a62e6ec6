using System.Text.Json.Serialization;

namespace Treaty.Bench.Peer;

/// <summary>The --json FILE `treaty bench --peer masstransit` reads; field names are camelCase.</summary>
internal sealed record PeerResult
{
    public string Peer { get; init; } = "masstransit";

    /// <summary>Routing slips completed per second in the measured window.</summary>
    public double Throughput { get; init; }

    public double P50Ms { get; init; }

    public double P95Ms { get; init; }

    public double P99Ms { get; init; }

    /// <summary>CPU time over the measured window, of the processes <see cref="CpuScope"/> names, per completed slip.</summary>
    public double CpuUsPerTx { get; init; }

    public string CpuScope { get; init; } = "";

    /// <summary>This process's peak resident set (VmHWM).</summary>
    public double RssMb { get; init; }

    public long Completed { get; init; }

    /// <summary>Slips that faulted, timed out or could not be sent in the measured window.</summary>
    public long Errors { get; init; }

    public int Branches { get; init; }

    public int Concurrency { get; init; }

    /// <summary>The measured window as it was timed (the requested --duration plus scheduling slack).</summary>
    public double DurationSeconds { get; init; }

    public int WarmupSeconds { get; init; }

    /// <summary>Which broker: a node this run started, or the --rabbitmq URL's host and port.</summary>
    public string Broker { get; init; } = "";

    /// <summary>The prefetch count of every receive endpoint (activity queues and the events queue).</summary>
    public int PrefetchCount { get; init; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(PeerResult))]
internal sealed partial class PeerJsonContext : JsonSerializerContext;
