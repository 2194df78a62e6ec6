using System.Globalization;
using System.Text.Json;

namespace Treaty.Cli.Bench;

/// <summary>What a peer (<c>bench/Treaty.Bench.Peer</c>) measured, as it writes it to its <c>--json</c> file.</summary>
/// <param name="Peer">Which peer (e.g. <c>masstransit</c>).</param>
/// <param name="Throughput">Completed operations per second in its window.</param>
/// <param name="P50Ms">Median latency.</param>
/// <param name="P95Ms">95th percentile latency.</param>
/// <param name="P99Ms">99th percentile latency.</param>
/// <param name="CpuUsPerTx">CPU per completed operation, µs.</param>
/// <param name="RssMb">Its memory, MiB.</param>
/// <param name="Completed">Operations completed in the window.</param>
/// <param name="Errors">Operations failed in the window.</param>
/// <param name="CpuScope">Whose CPU <paramref name="CpuUsPerTx"/> counts (the peer's process, its broker), as the peer says.</param>
internal sealed record PeerResult(
    string? Peer, double Throughput, double? P50Ms, double? P95Ms, double? P99Ms, double? CpuUsPerTx, double? RssMb, long Completed, long Errors,
    string? CpuScope = null)
{
    /// <summary>Reads the peer's JSON; throws <see cref="JsonException"/> when it is not the peer's shape.</summary>
    public static PeerResult Parse(string json) =>
        JsonSerializer.Deserialize(json, BenchJsonContext.Default.PeerResult) ?? throw new JsonException("The peer's JSON is null.");
}

/// <summary>
/// Runs the peer as a child process (<c>dotnet run -c Release --project bench/Treaty.Bench.Peer -- ...</c>)
/// against the bench's no-op participant, and reads what it wrote.
/// </summary>
internal static class PeerBench
{
    /// <summary>The peer's command line after <c>dotnet</c>.</summary>
    public static IReadOnlyList<string> Arguments(BenchSettings settings, string participantUrl, string jsonFile)
    {
        List<string> args =
        [
            "run", "-c", "Release", "--project", settings.PeerProject!, "--",
            "--participant", participantUrl,
            "--branches", settings.Branches.ToString(CultureInfo.InvariantCulture),
            "--concurrency", settings.Concurrency.ToString(CultureInfo.InvariantCulture),
            "--duration", Seconds(settings.Duration),
            "--warmup", Seconds(settings.Warmup),
            "--json", jsonFile,
        ];
        if (settings.RabbitMq is not null)
        {
            args.AddRange(["--rabbitmq", settings.RabbitMq]);
        }

        return args;
    }

    /// <summary>
    /// Runs the peer to its end (it builds itself first: allow minutes) and returns what it measured;
    /// throws <see cref="InvalidOperationException"/> with its output when it fails. The child is
    /// killed (with its own children) by pid when this returns or <paramref name="cancellationToken"/> fires.
    /// </summary>
    public static async Task<PeerResult> RunAsync(BenchSettings settings, string participantUrl, Action<ChildProcess> started, CancellationToken cancellationToken)
    {
        var jsonFile = Path.Combine(Path.GetTempPath(), $"treaty-bench-peer-{Guid.NewGuid():N}.json");
        var root = Path.GetDirectoryName(Path.GetDirectoryName(Path.GetDirectoryName(settings.PeerProject!)))!;
        using var peer = ChildProcess.StartDotnetHost("peer", root, Arguments(settings, participantUrl, jsonFile));
        using var kill = cancellationToken.Register(peer.Kill);
        started(peer);
        try
        {
            var exit = await peer.WaitForExitAsync(settings.Warmup + settings.Duration + TimeSpan.FromMinutes(10), cancellationToken);
            if (exit != 0)
            {
                throw new InvalidOperationException(
                    (exit is null ? "The peer did not finish in time" : $"The peer exited with code {exit}") + ":\n" + peer.Output);
            }

            if (!File.Exists(jsonFile))
            {
                throw new InvalidOperationException($"The peer exited 0 without writing {jsonFile}:\n{peer.Output}");
            }

            try
            {
                return PeerResult.Parse(await File.ReadAllTextAsync(jsonFile, cancellationToken));
            }
            catch (JsonException ex)
            {
                throw new InvalidOperationException($"The peer's JSON could not be read: {ex.Message}", ex);
            }
        }
        finally
        {
            File.Delete(jsonFile);
        }
    }

    // The peer takes whole seconds; a fraction (--warmup 500ms) is rounded up.
    private static string Seconds(TimeSpan duration) => ((long)Math.Ceiling(duration.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
}
