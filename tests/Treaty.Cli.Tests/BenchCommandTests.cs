using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Treaty.Cli.Bench;
using Treaty.Cli.Tests.Support;

namespace Treaty.Cli.Tests;

/// <summary>
/// <c>treaty bench</c>'s flags (each wrong one a usage error naming it, before anything starts), the
/// peer's command line and JSON, the report's JSON. The real runs are <see cref="BenchRunTests"/>.
/// </summary>
public sealed partial class BenchCommandTests
{
    internal static readonly Dictionary<string, string?> NoColor = new() { ["NO_COLOR"] = "1", ["TERM"] = "dumb" };

    [Theory]
    [InlineData(new[] { "--protocol", "xa" }, "--protocol")]
    [InlineData(new[] { "--branches", "0" }, "--branches")]
    [InlineData(new[] { "--branches", "65" }, "--branches")]
    [InlineData(new[] { "--branches", "three" }, "--branches")]
    [InlineData(new[] { "--concurrency", "0" }, "--concurrency")]
    [InlineData(new[] { "--concurrency", "-4" }, "--concurrency")]
    [InlineData(new[] { "--duration", "10" }, "--duration")]
    [InlineData(new[] { "--duration", "500ms" }, "--duration")]
    [InlineData(new[] { "--warmup", "soon" }, "--warmup")]
    [InlineData(new[] { "--store", "mysql" }, "--store")]
    [InlineData(new[] { "--store", "postgres" }, "--connection-string")]
    [InlineData(new[] { "--connection-string", "Host=127.0.0.1" }, "--connection-string")]
    [InlineData(new[] { "--peer", "nservicebus" }, "--peer")]
    [InlineData(new[] { "--rabbitmq", "amqp://127.0.0.1:5672/" }, "--rabbitmq")]
    [InlineData(new[] { "--json", "/nonexistent-dir-of-treaty-bench/b.json" }, "--json")]
    [InlineData(new[] { "--coordinators", "0" }, "--coordinators")]
    [InlineData(new[] { "--coordinators", "9" }, "--coordinators")]
    [InlineData(new[] { "--coordinators", "3" }, "--coordinators")] // SQLite is one process's
    [InlineData(new[] { "--in-flight", "0" }, "--in-flight")]
    [InlineData(new[] { "--in-flight", "100001" }, "--in-flight")]
    [InlineData(new[] { "--in-flight", "many" }, "--in-flight")]
    public async Task Bench_BadFlag_ExitsTwo_NamingIt_BeforeAnythingStarts(string[] flags, string named)
    {
        var result = await CliRun.CommandAsync(BenchCommand.Create(), ["bench", .. flags]);

        result.ExitCode.ShouldBe(2, result.ToString());
        result.Error.ShouldContain(named, customMessage: result.ToString());
        result.Out.ShouldNotContain("pid", customMessage: result.ToString()); // no coordinator, no participant
    }

    [Fact]
    public async Task Bench_PeerOutsideAClone_ExitsTwo_SayingItNeedsTheRepository()
    {
        var outside = Directory.CreateTempSubdirectory("treaty-bench-noclone-").FullName;
        try
        {
            var result = await CliRun.ProcessAsync(["bench", "--peer", "masstransit", "--duration", "1s"], outside, NoColor);

            result.ExitCode.ShouldBe(2, result.ToString());
            result.Error.ShouldContain("--peer masstransit needs a clone of the Treaty repository", customMessage: result.ToString());
            result.Error.ShouldContain(Path.Combine("bench", "Treaty.Bench.Peer", "Treaty.Bench.Peer.csproj"), customMessage: result.ToString());
            result.Out.ShouldNotContain("pid", customMessage: result.ToString());
        }
        finally
        {
            Directory.Delete(outside, recursive: true);
        }
    }

    [Fact]
    public void Settings_Peer_FoundFromASubdirectoryOfTheClone_AndGivenTheContractsCommandLine()
    {
        var clone = Directory.CreateTempSubdirectory("treaty-bench-clone-").FullName;
        try
        {
            var project = Path.Combine(clone, "bench", "Treaty.Bench.Peer", "Treaty.Bench.Peer.csproj");
            Directory.CreateDirectory(Path.GetDirectoryName(project)!);
            File.WriteAllText(project, "<Project />");
            var deep = Directory.CreateDirectory(Path.Combine(clone, "src", "Treaty.Cli")).FullName;

            var (settings, error) = BenchSettings.Parse(
                new BenchSettings.Raw(Branches: "5", Concurrency: "8", Duration: "1m", Warmup: "500ms", Peer: "masstransit", RabbitMq: "amqp://guest:guest@127.0.0.1:5672/"), deep);

            error.ShouldBeNull();
            settings!.PeerProject.ShouldBe(project);
            PeerBench.Arguments(settings, "http://127.0.0.1:5000", "/tmp/peer.json").ShouldBe(
            [
                "run", "-c", "Release", "--project", project, "--",
                "--participant", "http://127.0.0.1:5000", "--branches", "5", "--concurrency", "8",
                "--duration", "60", "--warmup", "1", "--json", "/tmp/peer.json",
                "--rabbitmq", "amqp://guest:guest@127.0.0.1:5672/",
            ]);
        }
        finally
        {
            Directory.Delete(clone, recursive: true);
        }
    }

    [Fact]
    public void Settings_Defaults_AndServeGetsThePostgresFlagsOnlyForPostgres()
    {
        var (settings, error) = BenchSettings.Parse(new BenchSettings.Raw(), "/");

        error.ShouldBeNull();
        settings.ShouldBe(new BenchSettings("saga", 3, 64, TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(20), "sqlite", null, null, null, null, null));
        BenchCommand.ServeArguments(settings!, "http://127.0.0.1:1", "/d").ShouldBe(["serve", "--urls", "http://127.0.0.1:1", "--data-dir", "/d"]);

        var postgres = BenchSettings.Parse(new BenchSettings.Raw(Store: "postgres", ConnectionString: "Host=h", Warmup: "0"), "/").Settings!;
        postgres.Warmup.ShouldBe(TimeSpan.Zero);
        // Three coordinators share the load, and their JIT takes three times as long to warm up.
        BenchSettings.Parse(new BenchSettings.Raw(Store: "postgres", ConnectionString: "Host=h", Coordinators: "3"), "/").Settings!
            .Warmup.ShouldBe(TimeSpan.FromSeconds(60));
        BenchSettings.Parse(new BenchSettings.Raw(Store: "postgres", ConnectionString: "Host=h", Coordinators: "3", Warmup: "5s"), "/").Settings!
            .Warmup.ShouldBe(TimeSpan.FromSeconds(5));
        // The connection string (and any password in it) never on the command line: in the environment.
        BenchCommand.ServeArguments(postgres, "http://127.0.0.1:1", "/d", instance: 2)
            .ShouldBe(["serve", "--urls", "http://127.0.0.1:1", "--data-dir", "/d", "--store", "postgres", "--instance-id", "bench-2"]);
        BenchCommand.ServeEnvironment(postgres).ShouldBe(new Dictionary<string, string> { [ServeCommand.ConnectionStringVariable] = "Host=h" });
        BenchCommand.ServeEnvironment(settings!).ShouldBeEmpty();
    }

    [Fact]
    public void PeerResult_ParsesThePeersJson()
    {
        // The shape bench/Treaty.Bench.Peer writes (its PeerResult), extra fields included.
        const string json = """
            {
              "peer": "masstransit",
              "throughput": 812.5,
              "p50Ms": 61.2,
              "p95Ms": 90.1,
              "p99Ms": 120.75,
              "cpuUsPerTx": 2150.4,
              "cpuScope": "this process + the broker (beam.smp)",
              "rssMb": 143.2,
              "completed": 8125,
              "errors": 0,
              "branches": 3,
              "concurrency": 64,
              "durationSeconds": 10.002,
              "warmupSeconds": 3,
              "broker": "started by this run on 127.0.0.1:5673",
              "prefetchCount": 64
            }
            """;

        var peer = PeerResult.Parse(json);

        peer.ShouldBe(new PeerResult("masstransit", 812.5, 61.2, 90.1, 120.75, 2150.4, 143.2, 8125, 0, "this process + the broker (beam.smp)"));
        Should.Throw<JsonException>(() => PeerResult.Parse("""{"throughput": "fast"}"""));
        Should.Throw<JsonException>(() => PeerResult.Parse("not json"));
    }

    [Fact]
    public void Report_WithAPeer_WritesItsFiguresAndTheRatio_CamelCase()
    {
        var peer = PeerResult.Parse("""{"peer":"masstransit","throughput":500,"p99Ms":80,"cpuUsPerTx":3000,"rssMb":120,"completed":5000,"errors":0}""");
        var report = new BenchReport
        {
            Protocol = "saga", Branches = 3, Concurrency = 64, DurationSeconds = 10, WarmupSeconds = 3, Store = "sqlite", Date = "2026-12-07T00:00:00Z", Cores = 2,
            Throughput = 1000, P50Ms = 20, P95Ms = 40, P99Ms = 60, CpuUsPerTx = 500, RssMb = 150, Committed = 10_000, Errors = 0,
            BaselineThroughput = 10_000, BaselineP50Ms = 2, BaselineP95Ms = 4, BaselineP99Ms = 6, BaselineErrors = 0, BaselineRatio = BenchReport.Ratio(1000, 10_000),
            Peer = peer.Peer, PeerThroughput = peer.Throughput, PeerP99Ms = peer.P99Ms, PeerCpuUsPerTx = peer.CpuUsPerTx, PeerRssMb = peer.RssMb, PeerErrors = peer.Errors,
            PeerRatio = BenchReport.Ratio(1000, peer.Throughput),
        };

        var json = JsonNode.Parse(JsonSerializer.Serialize(report, BenchJsonContext.Default.BenchReport))!.AsObject();

        ((double)json["peerThroughput"]!).ShouldBe(500);
        ((double)json["peerP99Ms"]!).ShouldBe(80);
        ((double)json["peerCpuUsPerTx"]!).ShouldBe(3000);
        ((double)json["peerRatio"]!).ShouldBe(2);
        ((double)json["baselineRatio"]!).ShouldBe(0.1);
        json.ContainsKey("peerCpuScope").ShouldBeTrue(); // written as null when the peer does not say
        BenchReport.Ratio(1000, 0).ShouldBeNull();
    }

    [Fact]
    public void StatusOf_ReadsTheTransactionsOwnStatus_NotABranchsNorAProblemsCode()
    {
        BenchWorkload.StatusOf("""{"gid":"g","status":"aborted","branches":[{"name":"b0","status":"committed"}]}"""u8).ShouldBe("aborted");
        BenchWorkload.StatusOf("""{"branches":[{"name":"b0","status":"aborted"}],"gid":"g","status":"committed"}"""u8).ShouldBe("committed");
        BenchWorkload.StatusOf("""{"type":"https://treaty.dev/problems/conflict","status":409}"""u8).ShouldBeNull();
        BenchWorkload.StatusOf("<html>bad gateway</html>"u8).ShouldBeNull();
    }

    internal static void CoordinatorShouldBeGone(string output) =>
        IsTreatyServe(CoordinatorPid(output)).ShouldBeFalse(output);

    internal static int CoordinatorPid(string output)
    {
        var match = CoordinatorLine().Match(output);
        match.Success.ShouldBeTrue(output);
        return int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    internal static IReadOnlyList<int> CoordinatorPids(string output) =>
        [.. CoordinatorLine().Matches(output).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))];

    // Gone, or its pid already reused by something else.
    internal static bool IsTreatyServe(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains("serve", StringComparison.Ordinal);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    [GeneratedRegex(@"coordinator(?:-\d+)?\s+pid (\d+)")]
    private static partial Regex CoordinatorLine();
}

/// <summary>The bench saturates the cores: its runs own the machine, so that they do not disturb other tests' timing.</summary>
[CollectionDefinition(nameof(BenchCollection), DisableParallelization = true)]
public sealed class BenchCollection;

/// <summary>
/// Real short runs of <c>treaty bench</c> against a <c>treaty serve</c> child, every protocol: positive
/// throughput and baseline, no errors, ordered percentiles, the coordinator's CPU and memory, and the
/// child gone afterwards, also after a failed start and after Ctrl+C.
/// </summary>
[Collection(nameof(BenchCollection))]
public sealed class BenchRunTests
{
    [Fact]
    public async Task Bench_Saga_ThreeBranches_MeasuresTreatyAndTheBaseline_AndStopsTheCoordinator()
    {
        var json = Path.Combine(Path.GetTempPath(), $"treaty-bench-test-{Guid.NewGuid():N}.json");
        try
        {
            var result = await CliRun.ProcessAsync(
                ["bench", "--protocol", "saga", "--branches", "3", "--concurrency", "4", "--duration", "2s", "--warmup", "1s", "--json", json],
                environment: BenchCommandTests.NoColor, timeout: TimeSpan.FromSeconds(90));

            result.ExitCode.ShouldBe(0, result.ToString());
            var report = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
            ((string?)report["protocol"]).ShouldBe("saga");
            ((int)report["branches"]!).ShouldBe(3);
            ((int)report["concurrency"]!).ShouldBe(4);
            ((double)report["durationSeconds"]!).ShouldBe(2);
            ((string?)report["store"]).ShouldBe("sqlite");
            ((int)report["cores"]!).ShouldBe(Environment.ProcessorCount);
            DateTimeOffset.Parse((string)report["date"]!, System.Globalization.CultureInfo.InvariantCulture).ShouldBeGreaterThan(DateTimeOffset.UnixEpoch);
            ((double)report["throughput"]!).ShouldBeGreaterThan(0);
            ((double)report["baselineThroughput"]!).ShouldBeGreaterThan(0);
            ((long)report["errors"]!).ShouldBe(0);
            ((long)report["baselineErrors"]!).ShouldBe(0);
            var (p50, p95, p99) = ((double)report["p50Ms"]!, (double)report["p95Ms"]!, (double)report["p99Ms"]!);
            p50.ShouldBeGreaterThan(0);
            p50.ShouldBeLessThanOrEqualTo(p95);
            p95.ShouldBeLessThanOrEqualTo(p99);
            ((double)report["cpuUsPerTx"]!).ShouldBeGreaterThan(0);
            // The store's writer thread, found by its name: part of the process's CPU, never all of it.
            var writer = (double)report["writerCpuUsPerTx"].ShouldNotBeNull("the writer thread (treaty-writer) was not found");
            writer.ShouldBeGreaterThan(0);
            writer.ShouldBeLessThan((double)report["cpuUsPerTx"]!);
            ((double)report["rssMb"]!).ShouldBeGreaterThan(0);
            ((double)report["baselineP99Ms"]!).ShouldBeGreaterThan(0);
            report.ContainsKey("peerThroughput").ShouldBeTrue();
            report["peerThroughput"].ShouldBeNull();

            // The table for people, plain (NO_COLOR, a pipe): its rows and no escape sequence.
            result.Out.ShouldContain("Treaty saga (coordinator process)", customMessage: result.ToString());
            result.Out.ShouldContain("baseline: 3 plain call(s), no coordinator", customMessage: result.ToString());
            result.Out.ShouldContain("the store's writer thread:", customMessage: result.ToString());
            result.Out.ShouldNotContain("\u001b[", customMessage: result.ToString());

            BenchCommandTests.CoordinatorShouldBeGone(result.Out);
        }
        finally
        {
            File.Delete(json);
        }
    }

    [Fact]
    public async Task Bench_InFlight_HoldsEverySagaAtOnce_ReadsTheMemory_ThenAllCommit()
    {
        var json = Path.Combine(Path.GetTempPath(), $"treaty-bench-test-{Guid.NewGuid():N}.json");
        try
        {
            var result = await CliRun.ProcessAsync(
                ["bench", "--branches", "3", "--concurrency", "8", "--duration", "1s", "--warmup", "0", "--in-flight", "600", "--json", json],
                environment: BenchCommandTests.NoColor, timeout: TimeSpan.FromSeconds(120));

            result.ExitCode.ShouldBe(0, result.ToString());
            var report = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
            ((int)report["inFlight"]!).ShouldBe(600);
            // The coordinator opens at most 256 connections to one participant (the default): the
            // participant holds that many calls and the other sagas wait in the coordinator.
            ((int)report["inFlightHeldCalls"]!).ShouldBe(256);
            ((double)report["inFlightRssMb"]!).ShouldBeGreaterThan(0);
            ((long)report["inFlightCommitted"]!).ShouldBe(600);
            ((long)report["inFlightErrors"]!).ShouldBe(0);
            ((double)report["inFlightDrainSeconds"]!).ShouldBeGreaterThan(0);
            result.Out.ShouldContain("In flight: 600 sagas held at once", customMessage: result.ToString());
            BenchCommandTests.CoordinatorShouldBeGone(result.Out);
        }
        finally
        {
            File.Delete(json);
        }
    }

    [Theory]
    [InlineData("tcc")]
    [InlineData("2pc")]
    [InlineData("3pc")]
    [InlineData("msg")]
    public async Task Bench_EveryOtherProtocol_OneBranch_Commits(string protocol)
    {
        var json = Path.Combine(Path.GetTempPath(), $"treaty-bench-test-{Guid.NewGuid():N}.json");
        try
        {
            var result = await CliRun.ProcessAsync(
                ["bench", "--protocol", protocol, "--branches", "1", "--concurrency", "2", "--duration", "1s", "--warmup", "1s", "--json", json],
                environment: BenchCommandTests.NoColor, timeout: TimeSpan.FromSeconds(90));

            result.ExitCode.ShouldBe(0, result.ToString());
            var report = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
            ((string?)report["protocol"]).ShouldBe(protocol);
            ((double)report["throughput"]!).ShouldBeGreaterThan(0);
            ((long)report["committed"]!).ShouldBeGreaterThan(0);
            ((long)report["errors"]!).ShouldBe(0);
            ((double)report["baselineThroughput"]!).ShouldBeGreaterThan(0);
            BenchCommandTests.CoordinatorShouldBeGone(result.Out);
        }
        finally
        {
            File.Delete(json);
        }
    }

    [Fact]
    public async Task Bench_ThreeCoordinatorsOnOnePostgreSql_Commits_AndStopsThemAll()
    {
        await using var postgres = await Treaty.Testing.PostgresServer.StartAsync();
        var connection = await postgres.CreateDatabaseAsync("bench");
        var json = Path.Combine(Path.GetTempPath(), $"treaty-bench-test-{Guid.NewGuid():N}.json");
        try
        {
            var result = await CliRun.ProcessAsync(
                ["bench", "--store", "postgres", "--connection-string", connection, "--coordinators", "3",
                 "--concurrency", "6", "--duration", "2s", "--warmup", "1s", "--json", json],
                environment: BenchCommandTests.NoColor, timeout: TimeSpan.FromSeconds(120));

            result.ExitCode.ShouldBe(0, result.ToString());
            var report = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
            ((string?)report["store"]).ShouldBe("postgres");
            ((int)report["coordinators"]!).ShouldBe(3);
            ((double)report["throughput"]!).ShouldBeGreaterThan(0);
            ((long)report["errors"]!).ShouldBe(0);
            ((double)report["cpuUsPerTx"]!).ShouldBeGreaterThan(0);
            report["writerCpuUsPerTx"].ShouldBeNull(); // the PostgreSQL store has no writer thread
            var pids = BenchCommandTests.CoordinatorPids(result.Out);
            pids.Count.ShouldBe(3, result.Out);
            pids.ShouldAllBe(pid => !BenchCommandTests.IsTreatyServe(pid));
            // The three instances' transactions are all in the one database.
            await using var db = new Npgsql.NpgsqlConnection(connection);
            await db.OpenAsync();
            await using var command = db.CreateCommand();
            command.CommandText = "SELECT count(*) FROM transactions WHERE status = 'committed'";
            Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture).ShouldBeGreaterThan(0);
        }
        finally
        {
            File.Delete(json);
        }
    }

    [Fact]
    public async Task Bench_CoordinatorFailsToStart_ExitsOne_AndLeavesNoCoordinator()
    {
        // Nothing listens on this port: whether this build's serve refuses --store postgres or cannot
        // reach the server, the coordinator does not become healthy.
        var connection = $"Host=127.0.0.1;Port={ChildProcess.FreePort()};Username=treaty;Database=treaty;Timeout=2";

        var result = await CliRun.ProcessAsync(
            ["bench", "--store", "postgres", "--connection-string", connection, "--duration", "1s", "--warmup", "0"],
            environment: BenchCommandTests.NoColor, timeout: TimeSpan.FromSeconds(120));

        result.ExitCode.ShouldBe(1, result.ToString());
        (result.Error + result.Out).ShouldContain("coordinator", customMessage: result.ToString());
        BenchCommandTests.CoordinatorShouldBeGone(result.Out);
    }

    [Fact]
    public async Task Bench_CtrlC_StopsTheCoordinator()
    {
        using var bench = ChildProcess.StartDotnet("bench", CliRun.Dll,
            ["bench", "--concurrency", "2", "--duration", "60s", "--warmup", "1s"],
            new Dictionary<string, string> { ["NO_COLOR"] = "1", ["TERM"] = "dumb" });
        var clock = Stopwatch.StartNew();
        while (!bench.Output.Contains("Treaty saga:", StringComparison.Ordinal))
        {
            clock.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(60), bench.Output);
            bench.HasExited.ShouldBeFalse(bench.Output);
            await Task.Delay(TimeSpan.FromMilliseconds(100), TimeProvider.System);
        }

        var coordinator = BenchCommandTests.CoordinatorPid(bench.Output);
        BenchCommandTests.IsTreatyServe(coordinator).ShouldBeTrue(bench.Output);
        using (var interrupt = Process.Start("kill", ["-INT", bench.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await interrupt.WaitForExitAsync();
        }

        var exit = await bench.WaitForExitAsync(TimeSpan.FromSeconds(20), CancellationToken.None);

        exit.ShouldNotBeNull(bench.Output); // it ended by itself, well before the 60 s window
        exit.ShouldNotBe(0, bench.Output);
        BenchCommandTests.IsTreatyServe(coordinator).ShouldBeFalse(bench.Output);
    }
}
