using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>
/// Traces, metrics and logs of the coordinator (docs/observability.md): the spans of a transaction
/// with their names, kinds and tags, in one trace; the metrics; the gid scope on every log line of a
/// transaction; event ids unique across the solution; and a real OTLP export to a receiver.
/// </summary>
public sealed partial class ObservabilityTests(ObservabilityFixture fixture) : IClassFixture<ObservabilityFixture>
{
    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Coordinator.Http;

    private string Url(string gid, string branch, string op) => _participant.Url($"{gid}/{branch}/{op}");

    [Fact]
    public async Task CommittedSaga_RecordsSubmitBranchAndDecisionSpans_InTheTransactionsTrace()
    {
        using var spans = new SpanRecorder("Treaty");
        var gid = Api.NewGid("otel-commit");
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
            Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))));
        await Api.WaitForStatusAsync(_http, gid, "committed");

        var of = await Eventually.Async(() => Task.FromResult(spans.Of(gid)), s => s.Any(a => a.DisplayName == "treaty.decision commit"), "the decision span");

        var submit = of.Single(a => a.OperationName == "treaty.submit");
        submit.Kind.ShouldBe(ActivityKind.Server);
        submit.GetTagItem("treaty.protocol").ShouldBe("saga");
        submit.GetTagItem("treaty.branches").ShouldBe(2);
        submit.GetTagItem("treaty.submit.result").ShouldBe("Created");

        var calls = of.Where(a => a.OperationName == "treaty.branch action").OrderBy(a => a.StartTimeUtc).ToList();
        calls.Select(a => a.GetTagItem("treaty.branch")).ShouldBe(["s1", "s2"]);
        calls.ShouldAllBe(a => a.Kind == ActivityKind.Client
            && (string?)a.GetTagItem("treaty.op") == "action"
            && (int?)a.GetTagItem("treaty.attempt") == 1
            && (int?)a.GetTagItem("http.response.status_code") == 200);

        var decision = of.Single(a => a.OperationName == "treaty.decision commit");
        decision.GetTagItem("treaty.outcome").ShouldBe("commit");
        of.ShouldNotContain(a => a.OperationName == "treaty.compensation");

        // One trace, derived from the gid, whatever the caller's; the submit span links the caller's.
        var trace = HttpBranchInvoker.TraceOf(gid).TraceId;
        of.ShouldAllBe(a => a.TraceId == trace);
        of.Select(a => a.OperationName).ShouldBe(["treaty.submit", "treaty.branch action", "treaty.branch action", "treaty.decision commit"], ignoreOrder: true);
    }

    [Fact]
    public async Task AbortedSaga_RecordsAbortDecisionCompensationAndCompensateSpans()
    {
        using var spans = new SpanRecorder("Treaty");
        var gid = Api.NewGid("otel-abort");
        _participant.Always($"{gid}/s2/action", 409);
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
            Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))));
        await Api.WaitForStatusAsync(_http, gid, "aborted");

        var of = await Eventually.Async(() => Task.FromResult(spans.Of(gid)), s => s.Any(a => a.OperationName == "treaty.branch compensate"), "the compensate span");

        var decision = of.Single(a => a.OperationName == "treaty.decision abort");
        decision.GetTagItem("treaty.reason").ShouldBeOfType<string>().ShouldContain("s2.action failed");
        var compensation = of.Single(a => a.OperationName == "treaty.compensation");
        compensation.Events.Select(e => e.Name).ShouldBe(["treaty.compensation.start"]);
        of.Single(a => a.OperationName == "treaty.branch action" && (string?)a.GetTagItem("treaty.branch") == "s2")
            .GetTagItem("http.response.status_code").ShouldBe(409);
        var compensate = of.Single(a => a.OperationName == "treaty.branch compensate");
        compensate.GetTagItem("treaty.branch").ShouldBe("s1");
        compensate.StartTimeUtc.ShouldBeGreaterThanOrEqualTo(compensation.StartTimeUtc);
        of.ShouldAllBe(a => a.TraceId == HttpBranchInvoker.TraceOf(gid).TraceId);
    }

    [Fact]
    public async Task BranchCall_CarriesOneTraceparent_NamingTheClientSpan_EvenWhenHttpClientTraces()
    {
        // Every source, HttpClient's and ASP.NET Core's included: HttpClient would name its own span
        // (or the submit request's) in traceparent if the invoker left propagation to it.
        using var spans = new SpanRecorder();
        var participant = fixture.TraceParticipant;
        var gid = Api.NewGid("otel-tp");
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", participant.Url("ok"), participant.Url("ok")),
            Json.Step("s2", participant.Url("flaky"), participant.Url("ok"), retry: Json.Retry(5, 10, 20))));
        await Api.WaitForStatusAsync(_http, gid, "committed");

        var clientSpans = await Eventually.Async(
            () => Task.FromResult(spans.Of(gid).Where(a => a.Kind == ActivityKind.Client).ToList()),
            s => s.Count == 2 + TraceRecordingParticipant.FlakyFailures, "every client span");
        var calls = participant.CallsOf(gid);
        calls.Count.ShouldBe(clientSpans.Count);
        foreach (var call in calls)
        {
            call.Traceparent.Count.ShouldBe(1, $"{call.Branch}#{call.Attempt}: one traceparent");
            var parts = call.Traceparent[0]!.Split('-');
            var span = clientSpans.SingleOrDefault(a => a.SpanId.ToHexString() == parts[2]);
            span.ShouldNotBeNull($"{call.Branch}#{call.Attempt}: traceparent {call.Traceparent[0]} names no treaty.branch span");
            span.GetTagItem("treaty.branch").ShouldBe(call.Branch);
            span.GetTagItem("treaty.attempt").ShouldBe(int.Parse(call.Attempt!, System.Globalization.CultureInfo.InvariantCulture));
            parts[1].ShouldBe(span.TraceId.ToHexString());
            parts[3].ShouldBe("01");
        }
    }

    [Fact]
    public async Task Metrics_CountTransactionsByOutcome_RetriesLatencyAndStoreBatches()
    {
        using var metrics = new MetricRecorder();
        var gid = Api.NewGid("otel-metrics");
        _participant.FailTimes($"{gid}/s1/action", 2, 503);
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"), retry: Json.Retry(5, 10, 20))));
        await Api.WaitForStatusAsync(_http, gid, "committed");

        await Eventually.Until(() => metrics.Of("treaty.transactions.finished").Any(m => m.Has("protocol", "saga") && m.Has("outcome", "committed")), "finished{saga, committed}");
        metrics.Of("treaty.transactions.submitted").ShouldContain(m => m.Has("protocol", "saga") && m.Value == 1);
        metrics.Of("treaty.branch.retries").Where(m => m.Has("op", "action")).Sum(m => m.Value).ShouldBeGreaterThanOrEqualTo(2);
        var durations = metrics.Of("treaty.branch.duration");
        durations.ShouldContain(m => m.Has("op", "action") && m.Has("outcome", "Unknown") && m.Has("retry", false));
        durations.ShouldContain(m => m.Has("op", "action") && m.Has("outcome", "Succeeded") && m.Has("retry", true));
        durations.ShouldAllBe(m => m.Unit == "ms" && m.Value >= 0);
        metrics.Of("treaty.decisions").ShouldContain(m => m.Has("protocol", "saga") && m.Has("outcome", "commit"));
        metrics.Of("treaty.store.writes").ShouldContain(m => m.Has("protocol", "saga") && m.Has("forced", true));
        // The listener is process-wide: PostgresStoreTests' writes (store=postgresql) may be in it too.
        var batches = metrics.Of("treaty.store.batch.size").Where(m => m.Has("store", "sqlite")).ToList();
        batches.ShouldNotBeEmpty();
        batches.ShouldAllBe(m => m.Value >= 1 && m.Unit == "{write}");
        metrics.Of("treaty.store.commit.duration").ShouldContain(m => m.Value > 0 && m.Has("store", "sqlite") && m.Unit == "ms");
    }

    [Fact]
    public async Task Gauges_ReportInFlightAndStuckTransactions()
    {
        using var metrics = new MetricRecorder();
        var engine = fixture.Engine;
        var gid = Api.NewGid("otel-gauge");
        var gate = _participant.Hold($"{gid}/s1/action");
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(), Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))));
        await Eventually.Until(() => _participant.CallsTo($"{gid}/s1/action").Count == 1, "the held call");

        metrics.Observe();
        var inFlight = metrics.Of("treaty.transactions.in_flight");
        inFlight.ShouldNotBeEmpty();
        inFlight.ShouldContain(m => m.Value >= 1, "this coordinator holds the transaction whose call is held");
        gate.Open();
        await Api.WaitForStatusAsync(_http, gid, "committed");

        var stuckGid = Api.NewGid("otel-stuck");
        _participant.Always($"{stuckGid}/s1/compensate", 503);
        _participant.Always($"{stuckGid}/s2/action", 409);
        await SubmitAsync(Json.Saga(stuckGid, Api.PayloadNode(),
            Json.Step("s1", Url(stuckGid, "s1", "action"), Url(stuckGid, "s1", "compensate"), retry: Json.Retry(2, 10, 60_000)),
            Json.Step("s2", Url(stuckGid, "s2", "action"), Url(stuckGid, "s2", "compensate"))));
        await Api.WaitUntilAsync(_http, stuckGid, v => v.Stuck, "stuck");

        engine.StuckCount.ShouldBeGreaterThanOrEqualTo(1);
        metrics.Observe();
        metrics.Of("treaty.transactions.stuck.current").ShouldContain(m => m.Value >= 1 && m.Unit == "{transaction}");
        metrics.Of("treaty.transactions.stuck").ShouldContain(m => m.Has("protocol", "saga"));

        _participant.Recover($"{stuckGid}/s1/compensate");
        using (var response = await _http.PostAsync($"{Api.Transactions}/{stuckGid}/retry", null))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        await Api.WaitForStatusAsync(_http, stuckGid, "aborted");
        await Eventually.Until(() => engine.StuckCount == 0, "the stuck gauge back at zero"); // this class's tests run one at a time
        metrics.Observe();
        metrics.Of("treaty.transactions.stuck.current").ShouldContain(m => m.Value == 0);
    }

    [Fact]
    public async Task Logs_OfATransaction_AllCarryItsGidScope()
    {
        var gid = Api.NewGid("otel-log");
        // A participant that is not there: the invoker logs the refused connection (2001).
        var nowhere = "http://127.0.0.1:1/nowhere";
        _participant.Always($"{gid}/s2/compensate", 503);
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
            Json.Step("s2", nowhere, Url(gid, "s2", "compensate"), retry: Json.Retry(2, 10, 60_000))));
        await Api.WaitUntilAsync(_http, gid, v => v.Stuck, "stuck");
        _participant.Recover($"{gid}/s2/compensate");
        using (var response = await _http.PostAsync($"{Api.Transactions}/{gid}/retry", null))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        await Api.WaitForStatusAsync(_http, gid, "aborted");
        fixture.Spans.Of(gid).Where(a => a.OperationName == "treaty.branch action" && (string?)a.GetTagItem("treaty.branch") == "s2")
            .ShouldAllBe(a => a.Status == ActivityStatusCode.Error && a.GetTagItem("http.response.status_code") == null, "a refused connection is an error span");
        fixture.Spans.Of(gid).Where(a => a.OperationName == "treaty.branch compensate" && (int?)a.GetTagItem("http.response.status_code") == 503)
            .ShouldNotBeEmpty();
        fixture.Spans.Of(gid).Where(a => (int?)a.GetTagItem("http.response.status_code") == 503).ShouldAllBe(a => a.Status == ActivityStatusCode.Error);

        var ids = new[] { 1006, 1007, 1003, 1008, 1009, 1002, 2001 };
        var logs = await Eventually.Async(
            () => Task.FromResult(fixture.Logs.Logs.Where(l => l.Message.Contains(gid, StringComparison.Ordinal)).ToList()),
            l => ids.All(id => l.Any(x => x.EventId.Id == id)), "submitted, decided, alert, unstuck, operator, finished and call-failed lines");

        logs.ShouldAllBe(l => l.ScopeGid == gid, string.Join(Environment.NewLine, logs.Where(l => l.ScopeGid != gid).Select(l => $"{l.EventId.Id} {l.Category}: {l.Message} (scope gid {l.ScopeGid ?? "none"})")));
        logs.ShouldAllBe(l => l.GidScopes == 1, "the engine's entry points nest; the scope is opened once");
        logs.Single(l => l.EventId.Id == 1007).Message.ShouldContain("abort");
        logs.Single(l => l.EventId.Id == 1009).Message.ShouldContain("retry");
        logs.First(l => l.EventId.Id == 2001).Category.ShouldBe(typeof(HttpBranchInvoker).FullName);
    }

    [Fact]
    public async Task AlertLogs_CarryTheGidScope()
    {
        var logs = new CapturingLoggerProvider();
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-alert-logs",
            configure: b =>
            {
                b.Logging.SetMinimumLevel(LogLevel.Information);
                b.Logging.AddProvider(logs);
            },
            configureOptions: o => o.AlertWebhook = _participant.Url("alerts"));
        var gid = Api.NewGid("otel-alert");
        _participant.Always($"{gid}/s1/compensate", 503);
        _participant.Always($"{gid}/s2/action", 409);
        using (var response = await Api.SubmitAsync(coordinator.Http, Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"), retry: Json.Retry(2, 10, 60_000)),
            Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate")))))
        {
            response.IsSuccessStatusCode.ShouldBeTrue();
        }

        // 3102: recorded in the outbox; 3103: delivered to the webhook.
        var alertLines = await Eventually.Async(
            () => Task.FromResult(logs.Logs.Where(l => l.EventId.Id is 3102 or 3103 && l.Message.Contains(gid, StringComparison.Ordinal)).ToList()),
            l => l.Any(x => x.EventId.Id == 3102) && l.Any(x => x.EventId.Id == 3103), "the alert recorded and delivered");
        alertLines.ShouldAllBe(l => l.ScopeGid == gid && l.GidScopes == 1);
    }

    [Fact]
    public void EventIds_OfEveryLoggerMessage_AreUniqueAcrossTheSolution()
    {
        var messages = LoggerMessages().ToList();
        var scanned = messages.Select(m => m.Assembly).Distinct().ToList();

        // Every assembly whose sources declare [LoggerMessage] is here (a new one must be referenced by this project).
        scanned.ShouldBe(["Shop", "Treaty.AspNetCore", "Treaty.Core", "Treaty.Messaging", "Treaty.Server", "Treaty.Storage.PostgreSql", "Treaty.Storage.Sqlite"], ignoreOrder: true);
        messages.Count.ShouldBe(SourceDeclarations(), "every [LoggerMessage] of src/ and samples/ is found by reflection");
        var duplicates = messages.GroupBy(m => m.EventId).Where(g => g.Count() > 1)
            .Select(g => $"{g.Key}: {string.Join(", ", g.Select(m => m.Method))}").ToList();
        duplicates.ShouldBeEmpty();
        messages.ShouldAllBe(m => m.EventId > 0);
        // The alert monitor keeps 3101-3105 and the security work 3001-3020 (docs/observability.md).
        messages.Where(m => m.EventId is >= 3001 and <= 3020).ShouldAllBe(m => m.Method.StartsWith("Treaty.Server.Security.", StringComparison.Ordinal));
        messages.Where(m => m.EventId is >= 3021 and <= 3099).ShouldBeEmpty();
    }

    [Fact]
    public async Task OtlpExport_SendsSpansMetricsAndLogs_ToTheCollector()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-otlp", configure: b => b.Logging.SetMinimumLevel(LogLevel.Debug), configureOptions: o =>
        {
            o.OtlpEndpoint = receiver.BaseAddress.AbsoluteUri;
            o.OtlpExportInterval = TimeSpan.FromMilliseconds(200);
            o.InstanceId = "coordinator-otlp-7";
        });
        var gid = Api.NewGid("otel-otlp");
        using (var response = await Api.SubmitAsync(coordinator.Http, Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")))))
        {
            response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
        }

        await Api.WaitForStatusAsync(coordinator.Http, gid, "committed");

        await Eventually.Until(() => receiver.Received("/v1/traces", "treaty.submit", "treaty.branch action", "treaty.decision commit", gid), "the spans at /v1/traces");
        await Eventually.Until(() => receiver.Received("/v1/metrics", "treaty.transactions.finished", "treaty.branch.duration", "treaty.store.batch.size", "treaty.store.commit.duration", "treaty.transactions.in_flight"), "the metrics at /v1/metrics");
        // The decision's line (Debug), with the gid scope as an attribute.
        await Eventually.Until(() => receiver.ReceivedTogether("/v1/logs", $"Transaction {gid} decided: commit", "gid"), "the decision's log line at /v1/logs");
        receiver.ContentTypes.ShouldAllBe(t => t == "application/x-protobuf");
        // The resource's service.name: an AnyValue whose string_value (field 1, length 6) is "treaty".
        receiver.ReceivedTogether("/v1/traces", "service.name", "\n\u0006" + OtlpExport.DefaultServiceName, "treaty.submit").ShouldBeTrue();
        // service.instance.id: the instance's lease owner name, on every signal.
        foreach (var signal in new[] { "/v1/traces", "/v1/metrics", "/v1/logs" })
        {
            receiver.ReceivedTogether(signal, "service.instance.id", "\n\u0012coordinator-otlp-7").ShouldBeTrue(signal);
        }
    }

    [Fact]
    public async Task OtlpExport_OverGrpc_SendsSpansAndMetrics()
    {
        await using var receiver = await OtlpReceiver.StartAsync(grpc: true);
        await using var coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-otlp-grpc", configureOptions: o =>
        {
            o.OtlpEndpoint = receiver.BaseAddress.AbsoluteUri;
            o.OtlpProtocol = "grpc";
            o.OtlpExportInterval = TimeSpan.FromMilliseconds(200);
        });
        var gid = Api.NewGid("otel-grpc");
        using (var response = await Api.SubmitAsync(coordinator.Http, Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")))))
        {
            response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
        }

        await Api.WaitForStatusAsync(coordinator.Http, gid, "committed");

        await Eventually.Until(() => receiver.Received(OtlpReceiver.GrpcTraces, "treaty.submit", "treaty.branch action", gid), "the spans over gRPC");
        await Eventually.Until(() => receiver.Received(OtlpReceiver.GrpcMetrics, "treaty.transactions.finished", "treaty.store.batch.size"), "the metrics over gRPC");
        receiver.ContentTypes.ShouldAllBe(t => t.StartsWith("application/grpc", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Serve_WithOtlpEndpoint_ExportsSpansToTheCollector()
    {
        await using var receiver = await OtlpReceiver.StartAsync();
        using var data = new TempDir("treaty-otlp-serve");
        var url = $"http://127.0.0.1:{Cli.ChildProcess.FreePort()}";
        using var process = Cli.ChildProcess.StartDotnet("otlp-serve", Path.Combine(AppContext.BaseDirectory, "treaty.dll"),
            ["serve", "--urls", url, "--data-dir", data.Path, "--otlp-endpoint", receiver.BaseAddress.AbsoluteUri, "--otlp-protocol", "http"]);
        using var http = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromSeconds(30) };
        await process.WaitHealthyAsync(http, url + "/healthz", TimeSpan.FromSeconds(60), CancellationToken.None);
        var gid = Api.NewGid("otel-serve");
        using (var response = await Api.SubmitAsync(http, Json.Saga(gid, Api.PayloadNode(), Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")))))
        {
            response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
        }

        await Api.WaitForStatusAsync(http, gid, "committed");

        // The default export interval (10 s) applies: allow for it.
        await Eventually.Until(() => receiver.Received("/v1/traces", "treaty.submit", "treaty.branch action", gid), "the spans at /v1/traces", TimeSpan.FromSeconds(40));
        await Eventually.Until(() => receiver.Received("/v1/metrics", "treaty.transactions.finished"), "the metrics at /v1/metrics", TimeSpan.FromSeconds(40));
        process.Kill();
    }

    [Theory]
    [InlineData("udp://127.0.0.1:4318", "http", "OtlpEndpoint must be an absolute http or https URL.")]
    [InlineData("collector:4318", "http", "OtlpEndpoint must be an absolute http or https URL.")]
    [InlineData("http://127.0.0.1:4318", "http/json", "OtlpProtocol must be http or grpc.")]
    public void Options_BadOtlpSettings_AreRefusedAtStart(string endpoint, string protocol, string problem)
    {
        var options = new TreatyServerOptions { OtlpEndpoint = endpoint, OtlpProtocol = protocol };
        Should.Throw<ArgumentException>(options.Validate).Message.ShouldContain(problem);
        new TreatyServerOptions { OtlpEndpoint = "http://127.0.0.1:4317", OtlpProtocol = "grpc" }.Validate();
    }

    [Theory]
    [InlineData("grpc", "http/protobuf", "grpc")]
    [InlineData(null, "http/protobuf", "http")]
    [InlineData(null, "grpc", "grpc")]
    [InlineData(null, null, "http")]
    [InlineData("", "", "http")]
    public void Serve_OtlpProtocol_FlagWinsOverTheStandardVariable(string? flag, string? environment, string expected)
    {
        Cli.ServeCommand.OtlpProtocolVariable.ShouldBe("OTEL_EXPORTER_OTLP_PROTOCOL");
        Cli.ServeCommand.OtlpEndpointVariable.ShouldBe("OTEL_EXPORTER_OTLP_ENDPOINT");
        Cli.ServeCommand.ResolveOtlpProtocol(flag, environment).ShouldBe(expected);
    }

    private async Task SubmitAsync(System.Text.Json.Nodes.JsonObject body)
    {
        using var response = await Api.SubmitAsync(_http, body);
        response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
    }

    private sealed record LoggerMessageDeclaration(string Assembly, string Method, int EventId);

    private static IEnumerable<LoggerMessageDeclaration> LoggerMessages()
    {
        var directory = AppContext.BaseDirectory;
        var files = Directory.GetFiles(directory, "*.dll")
            .Where(f => Path.GetFileName(f) is var name
                && (name.StartsWith("Treaty.", StringComparison.OrdinalIgnoreCase) || name is "treaty.dll" or "Shop.dll")
                && !name.Contains(".Tests", StringComparison.Ordinal) && name != "Treaty.Testing.dll");
        foreach (var file in files)
        {
            var assembly = Assembly.LoadFrom(file);
            foreach (var type in assembly.GetTypes())
            {
                foreach (var method in type.GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static | BindingFlags.Instance | BindingFlags.DeclaredOnly))
                {
                    if (method.GetCustomAttribute<LoggerMessageAttribute>() is { } attribute)
                    {
                        yield return new(assembly.GetName().Name!, $"{type.FullName}.{method.Name}", attribute.EventId);
                    }
                }
            }
        }
    }

    /// <summary>How many <c>[LoggerMessage(</c> the sources declare.</summary>
    private static int SourceDeclarations()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Treaty.sln")))
        {
            root = root.Parent;
        }

        root.ShouldNotBeNull("the repository root (Treaty.sln) above the test binaries");
        return new[] { "src", "samples" }
            .SelectMany(d => Directory.EnumerateFiles(Path.Combine(root.FullName, d), "*.cs", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal)
                && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .Sum(f => LoggerMessageAttributeUse().Count(File.ReadAllText(f)));
    }

    [GeneratedRegex(@"\[LoggerMessage\(")]
    private static partial Regex LoggerMessageAttributeUse();
}

/// <summary>A coordinator that logs everything to a capturing provider, and two participants.</summary>
public sealed class ObservabilityFixture : IAsyncLifetime
{
    public CapturingLoggerProvider Logs { get; } = new();

    /// <summary>Every Treaty span while the class runs (the tests that need exact sets make their own).</summary>
    public SpanRecorder Spans { get; } = new("Treaty");

    public Participant Participant { get; private set; } = null!;

    public TraceRecordingParticipant TraceParticipant { get; private set; } = null!;

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public Core.Engine.TransactionEngine Engine => (Core.Engine.TransactionEngine)Coordinator.Services.GetService(typeof(Core.Engine.TransactionEngine))!;

    public async Task InitializeAsync()
    {
        Participant = await Participant.StartAsync();
        TraceParticipant = await TraceRecordingParticipant.StartAsync();
        Coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-observability", configure: b =>
        {
            b.Logging.SetMinimumLevel(LogLevel.Debug);
            b.Logging.AddProvider(Logs);
        });
    }

    public async Task DisposeAsync()
    {
        if (Coordinator is not null)
        {
            await Coordinator.DisposeAsync();
        }

        if (TraceParticipant is not null)
        {
            await TraceParticipant.DisposeAsync();
        }

        if (Participant is not null)
        {
            await Participant.DisposeAsync();
        }

        Spans.Dispose();
    }
}

/// <summary>
/// A stand-in OTLP/HTTP collector: accepts <c>POST /v1/traces</c>, <c>/v1/metrics</c> and
/// <c>/v1/logs</c>, answers 200 with an empty protobuf body, and keeps what arrived. Checks are on
/// the protobuf bytes: the strings it carries (span, metric and attribute names) appear in them as UTF-8.
/// </summary>
internal sealed class OtlpReceiver : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentQueue<(string Path, byte[] Body)> _bodies = new();
    private readonly ConcurrentQueue<string> _contentTypes = new();

    private OtlpReceiver(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public IReadOnlyList<string> ContentTypes => [.. _contentTypes];

    /// <summary>The gRPC methods of the OTLP collector services.</summary>
    public const string GrpcTraces = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

    public const string GrpcMetrics = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

    public const string GrpcLogs = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

    /// <param name="grpc">Serve OTLP/gRPC (HTTP/2 without TLS) instead of OTLP/HTTP.</param>
    public static async Task<OtlpReceiver> StartAsync(bool grpc = false)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        if (grpc)
        {
            builder.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(e => e.Protocols = Microsoft.AspNetCore.Server.Kestrel.Core.HttpProtocols.Http2));
        }

        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var receiver = new OtlpReceiver(app);
        if (grpc)
        {
            foreach (var method in new[] { GrpcTraces, GrpcMetrics, GrpcLogs })
            {
                app.MapPost(method, receiver.AcceptGrpcAsync);
            }
        }
        else
        {
            foreach (var signal in new[] { "traces", "metrics", "logs" })
            {
                app.MapPost("/v1/" + signal, receiver.AcceptAsync);
            }
        }

        await app.StartAsync();
        receiver.BaseAddress = new Uri(app.Urls.Single());
        return receiver;
    }

    /// <summary>True when every one of <paramref name="texts"/> arrived in a body posted to <paramref name="path"/>
    /// (spans of one transaction may end in different export batches).</summary>
    public bool Received(string path, params string[] texts) =>
        texts.All(t => _bodies.Any(b => b.Path == path && b.Body.AsSpan().IndexOf(Encoding.UTF8.GetBytes(t)) >= 0));

    /// <summary>True when one body posted to <paramref name="path"/> contains all of <paramref name="texts"/>.</summary>
    public bool ReceivedTogether(string path, params string[] texts) =>
        _bodies.Any(b => b.Path == path && texts.All(t => b.Body.AsSpan().IndexOf(Encoding.UTF8.GetBytes(t)) >= 0));

    private async Task AcceptAsync(HttpContext context)
    {
        using var body = new MemoryStream();
        await context.Request.Body.CopyToAsync(body, context.RequestAborted);
        _contentTypes.Enqueue(context.Request.ContentType ?? "");
        _bodies.Enqueue((context.Request.Path.Value!, body.ToArray()));
        context.Response.ContentType = "application/x-protobuf";
        context.Response.StatusCode = StatusCodes.Status200OK;
    }

    /// <summary>One unary gRPC call: a length-prefixed request, an empty Export*ServiceResponse, grpc-status 0.</summary>
    private async Task AcceptGrpcAsync(HttpContext context)
    {
        using var body = new MemoryStream();
        await context.Request.Body.CopyToAsync(body, context.RequestAborted);
        _contentTypes.Enqueue(context.Request.ContentType ?? "");
        _bodies.Enqueue((context.Request.Path.Value!, body.ToArray()));
        context.Response.ContentType = "application/grpc";
        await context.Response.Body.WriteAsync(new byte[5], context.RequestAborted); // not compressed, length 0
        context.Response.AppendTrailer("grpc-status", "0");
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
