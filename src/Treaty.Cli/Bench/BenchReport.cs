using System.Globalization;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace Treaty.Cli.Bench;

/// <summary>
/// What <c>treaty bench</c> measured, as it writes it to <c>--json</c> (camelCase). Latencies in
/// milliseconds, from a client's submit to the transaction's end; null where nothing completed.
/// </summary>
internal sealed record BenchReport
{
    public required string Protocol { get; init; }

    public required int Branches { get; init; }

    public required int Concurrency { get; init; }

    public required double DurationSeconds { get; init; }

    public required double WarmupSeconds { get; init; }

    public required string Store { get; init; }

    /// <summary>Coordinator instances (on one PostgreSQL store when more than one); CPU per transaction counts them all.</summary>
    public int Coordinators { get; init; } = 1;

    /// <summary>When the run ended, ISO 8601 UTC.</summary>
    public required string Date { get; init; }

    public required int Cores { get; init; }

    /// <summary>Committed transactions per second.</summary>
    public required double Throughput { get; init; }

    public required double? P50Ms { get; init; }

    public required double? P95Ms { get; init; }

    public required double? P99Ms { get; init; }

    /// <summary>The coordinator process's CPU time (user + system) over the window, per committed transaction, µs.</summary>
    public required double? CpuUsPerTx { get; init; }

    /// <summary>
    /// Of <see cref="CpuUsPerTx"/>, the SQLite store's writer thread (<c>treaty-writer</c>: every
    /// write and fsync), µs per committed transaction; null with PostgreSQL or without <c>/proc</c>.
    /// A steadier figure than the process's for a change to the store.
    /// </summary>
    public double? WriterCpuUsPerTx { get; init; }

    /// <summary>The coordinator process's peak resident set (VmHWM), MiB.</summary>
    public required double RssMb { get; init; }

    public required long Committed { get; init; }

    /// <summary>Transactions that ended otherwise (aborted, an HTTP error, a timeout) inside the window.</summary>
    public required long Errors { get; init; }

    /// <summary>Baseline operations (the client calls the branches' participant endpoints itself) per second.</summary>
    public required double BaselineThroughput { get; init; }

    public required double? BaselineP50Ms { get; init; }

    public required double? BaselineP95Ms { get; init; }

    public required double? BaselineP99Ms { get; init; }

    public required long BaselineErrors { get; init; }

    /// <summary><see cref="Throughput"/> / <see cref="BaselineThroughput"/>.</summary>
    public required double? BaselineRatio { get; init; }

    /// <summary>The peer compared with (<c>masstransit</c>), or null.</summary>
    public string? Peer { get; init; }

    public double? PeerThroughput { get; init; }

    public double? PeerP50Ms { get; init; }

    public double? PeerP95Ms { get; init; }

    public double? PeerP99Ms { get; init; }

    public double? PeerCpuUsPerTx { get; init; }

    /// <summary>Whose CPU <see cref="PeerCpuUsPerTx"/> counts, as the peer reports it (e.g. its process and the broker's).</summary>
    public string? PeerCpuScope { get; init; }

    public double? PeerRssMb { get; init; }

    public long? PeerErrors { get; init; }

    /// <summary><see cref="Throughput"/> / <see cref="PeerThroughput"/>.</summary>
    public double? PeerRatio { get; init; }

    /// <summary>Sagas held in flight at once (<c>--in-flight</c>), or null.</summary>
    public int? InFlight { get; init; }

    /// <summary>Of them, calls the participant held at once (the rest waited in the coordinator for a connection).</summary>
    public int? InFlightHeldCalls { get; init; }

    /// <summary>The coordinator's resident set (VmRSS) with every one of them in flight, MiB.</summary>
    public double? InFlightRssMb { get; init; }

    public double? InFlightSubmitSeconds { get; init; }

    /// <summary>From letting the held calls answer to every held saga committed.</summary>
    public double? InFlightDrainSeconds { get; init; }

    public long? InFlightCommitted { get; init; }

    public long? InFlightErrors { get; init; }

    /// <summary>The table for people.</summary>
    public void Write(IAnsiConsole console)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .Title(Invariant($"treaty bench: {Protocol}, {Branches} branch(es), {Concurrency} clients, {DurationSeconds:0.###} s after {WarmupSeconds:0.###} s warm-up, {Store}{(Coordinators > 1 ? $" ({Coordinators} coordinators)" : "")}, {Cores} cores"));
        table.AddColumn("run");
        foreach (var column in new[] { "tx/s", "p50 ms", "p95 ms", "p99 ms", "CPU µs/tx", "RSS MiB", "errors" })
        {
            table.AddColumn(new TableColumn(column).RightAligned());
        }

        table.AddRow(Markup.Escape($"Treaty {Protocol} (coordinator process)"), Number(Throughput, "N0"), Number(P50Ms, "0.0"), Number(P95Ms, "0.0"), Number(P99Ms, "0.0"),
            Number(CpuUsPerTx, "N0"), Number(RssMb, "N0"), Number(Errors, "N0"));
        table.AddRow(Markup.Escape($"baseline: {Branches} plain call(s), no coordinator"), Number(BaselineThroughput, "N0"), Number(BaselineP50Ms, "0.0"), Number(BaselineP95Ms, "0.0"), Number(BaselineP99Ms, "0.0"),
            "–", "–", Number(BaselineErrors, "N0"));
        if (Peer is not null)
        {
            table.AddRow(Markup.Escape($"peer: {Peer}"), Number(PeerThroughput, "N0"), Number(PeerP50Ms, "0.0"), Number(PeerP95Ms, "0.0"), Number(PeerP99Ms, "0.0"),
                Number(PeerCpuUsPerTx, "N0"), Number(PeerRssMb, "N0"), Number(PeerErrors, "N0"));
        }

        console.Write(table);
        if (WriterCpuUsPerTx is { } writer)
        {
            console.MarkupLine(Markup.Escape(Invariant($"Of the coordinator's CPU, the store's writer thread: {writer:N0} µs/tx")));
        }

        console.MarkupLine(Markup.Escape(Invariant($"Treaty / baseline: {Number(BaselineRatio, "0.00")}")
            + (Peer is null ? "" : Invariant($"; Treaty / {Peer}: {Number(PeerRatio, "0.00")}"))
            + (PeerCpuScope is null ? "" : $"; the peer's CPU is {PeerCpuScope}")));
        if (InFlight is { } inFlight)
        {
            console.MarkupLine(Markup.Escape(Invariant(
                $"In flight: {inFlight:N0} sagas held at once ({Number(InFlightHeldCalls, "N0")} calls at the participant, the rest waiting in the coordinator): coordinator RSS {Number(InFlightRssMb, "N0")} MiB; submitted in {Number(InFlightSubmitSeconds, "0.0")} s, all committed {Number(InFlightDrainSeconds, "0.0")} s after release ({Number(InFlightCommitted, "N0")} committed, {Number(InFlightErrors, "N0")} errors)")));
        }
    }

    /// <summary>a / b, or null when b is not positive.</summary>
    public static double? Ratio(double a, double? b) => b is > 0 ? a / b : null;

    private static string Number(double? value, string format) => value is { } v ? v.ToString(format, CultureInfo.InvariantCulture) : "–";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}

/// <summary>The bench's JSON: its report and the peer's, camelCase, nulls written.</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    WriteIndented = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    PropertyNameCaseInsensitive = true)]
[JsonSerializable(typeof(BenchReport))]
[JsonSerializable(typeof(PeerResult))]
internal sealed partial class BenchJsonContext : JsonSerializerContext;
