using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Diagnostics;

namespace Treaty.AspNetCore.Tests;

/// <summary>
/// The kit's server span <c>treaty.branch {op}</c>: over real HTTP on loopback, a child of the
/// coordinator's client span for the same call (W3C trace context), so both sides of a transaction
/// share one trace; and the gid scope on the kit's log lines.
/// </summary>
public sealed class BranchTelemetryTests(BranchTelemetryFixture fixture) : IClassFixture<BranchTelemetryFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private static readonly JsonElement Payload = JsonSerializer.SerializeToElement(new Dictionary<string, object> { ["orderId"] = "o-1" });

    private static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    [Fact]
    public async Task ParticipantSpan_IsAChildOfTheCoordinatorsClientSpan_InOneTrace()
    {
        using var spans = new SpanRecorder("Treaty", TreatyParticipantTelemetry.ActivitySourceName);
        var gid = NewGid("kit-span");

        var view = await fixture.Coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", fixture.Url("pay"), fixture.Url("pay"))
            .Step("ship", fixture.Url("ship"), fixture.Url("ship"))
            .SubmitAsync(wait: Wait);
        view.Status.ShouldBe("committed", view.Reason);

        var of = await SpansAsync(spans, gid, 4);
        foreach (var branch in new[] { "pay", "ship" })
        {
            var client = of.Single(a => a.Source.Name == "Treaty" && a.Kind == ActivityKind.Client && (string?)a.GetTagItem("treaty.branch") == branch);
            var server = of.Single(a => a.Source.Name == TreatyParticipantTelemetry.ActivitySourceName && (string?)a.GetTagItem("treaty.branch") == branch);
            server.OperationName.ShouldBe("treaty.branch action");
            server.Kind.ShouldBe(ActivityKind.Server);
            server.TraceId.ShouldBe(client.TraceId);
            server.ParentSpanId.ShouldBe(client.SpanId, $"{branch}: the participant's span is the child of the coordinator's call");
            server.HasRemoteParent.ShouldBeTrue();
            server.GetTagItem("treaty.op").ShouldBe("action");
            server.GetTagItem("treaty.attempt").ShouldBe(1);
            server.GetTagItem("http.response.status_code").ShouldBe(200);
            server.GetTagItem("treaty.barrier").ShouldNotBeNull();
        }
    }

    [Fact]
    public async Task CompensationSpans_OnBothSides_ShareTheTransactionsTrace()
    {
        using var spans = new SpanRecorder("Treaty", TreatyParticipantTelemetry.ActivitySourceName);
        var gid = NewGid("kit-comp");

        var view = await fixture.Coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", fixture.Url("pay"), fixture.Url("pay"))
            .Step("declined", fixture.Url("declined"), fixture.Url("declined"))
            .SubmitAsync(wait: Wait);
        view.Status.ShouldBe("aborted");

        var of = await SpansAsync(spans, gid, 6); // 2 calls + 1 compensation on each side
        var server = of.Where(a => a.Source.Name == TreatyParticipantTelemetry.ActivitySourceName).ToList();
        server.Select(a => a.OperationName).ShouldBe(["treaty.branch action", "treaty.branch action", "treaty.branch compensate"], ignoreOrder: true);
        server.Single(a => (string?)a.GetTagItem("treaty.branch") == "declined").GetTagItem("http.response.status_code").ShouldBe(409);
        var compensate = server.Single(a => a.OperationName == "treaty.branch compensate");
        var client = of.Single(a => a.Source.Name == "Treaty" && a.OperationName == "treaty.branch compensate");
        compensate.ParentSpanId.ShouldBe(client.SpanId);
        of.Select(a => a.TraceId).Distinct().Count().ShouldBe(1);
    }

    [Fact]
    public async Task ParticipantSpan_TakesTheIncomingTraceparent_AndWithoutOneIsNotInAnyOtherTrace()
    {
        using var spans = new SpanRecorder(TreatyParticipantTelemetry.ActivitySourceName);
        using var http = new HttpClient();
        var traced = NewGid("kit-tp");
        var parent = ActivityContext.Parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", null);
        await PostAsync(http, traced, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        var untraced = NewGid("kit-notp");
        await PostAsync(http, untraced, traceparent: null);

        var withParent = (await SpansAsync(spans, traced, 1)).Single();
        withParent.TraceId.ShouldBe(parent.TraceId);
        withParent.ParentSpanId.ShouldBe(parent.SpanId);
        // No trace context came in: the span is in the host's own trace for the request (a new one).
        var own = (await SpansAsync(spans, untraced, 1)).Single();
        own.HasRemoteParent.ShouldBeFalse();
        own.TraceId.ShouldNotBe(parent.TraceId);
        own.TraceId.ShouldNotBe(default);
    }

    [Fact]
    public async Task KitMetrics_RecordEachCallsDuration_ByOpBarrierDecisionAndStatus()
    {
        using var metrics = new MetricRecorder(TreatyParticipantTelemetry.MeterName);
        var gid = NewGid("kit-metric");
        var view = await fixture.Coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", fixture.Url("pay"), fixture.Url("pay"))
            .Step("declined", fixture.Url("declined"), fixture.Url("declined"))
            .SubmitAsync(wait: Wait);
        view.Status.ShouldBe("aborted");

        var durations = await Eventually(() => metrics.Of("treaty.participant.branch.duration").ToList(), 3);
        durations.ShouldAllBe(m => m.Unit == "ms" && m.Value >= 0);
        durations.ShouldContain(m => m.Has("op", "action") && m.Has("barrier", "executed") && m.Has("http.response.status_code", 200));
        durations.ShouldContain(m => m.Has("op", "action") && m.Has("http.response.status_code", 409));
        durations.ShouldContain(m => m.Has("op", "compensate") && m.Has("http.response.status_code", 200));
    }

    [Fact]
    public async Task KitLogs_OfABranchCall_CarryTheGidScope()
    {
        var gid = NewGid("kit-log");
        var view = await fixture.Coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", fixture.Url("pay"), fixture.Url("pay"))
            .SubmitAsync(wait: Wait);
        view.Status.ShouldBe("committed");

        var recorded = await Eventually(() => fixture.Logs.Logs.Where(l => l.EventId.Id == 4201 && l.Message.Contains(gid, StringComparison.Ordinal)).ToList());
        recorded.ShouldAllBe(l => l.ScopeGid == gid);
    }

    private async Task PostAsync(HttpClient http, string gid, string? traceparent)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, fixture.Url("pay"))
        {
            Content = new StringContent(JsonSerializer.Serialize(new { gid, branch = "pay", op = "action", payload = new { } }), Encoding.UTF8, "application/json"),
        };
        if (traceparent is not null)
        {
            request.Headers.TryAddWithoutValidation("traceparent", traceparent);
        }

        using var response = await http.SendAsync(request);
        response.IsSuccessStatusCode.ShouldBeTrue();
    }

    private static Task<List<Activity>> SpansAsync(SpanRecorder spans, string gid, int count) =>
        Eventually(() => spans.Of(gid).ToList(), count);

    private static async Task<List<T>> Eventually<T>(Func<List<T>> probe, int atLeast = 1)
    {
        var deadline = TimeProvider.System.GetUtcNow() + Wait;
        while (true)
        {
            var found = probe();
            if (found.Count >= atLeast || TimeProvider.System.GetUtcNow() > deadline)
            {
                return found;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System);
        }
    }
}

/// <summary>A coordinator and a kit participant (<c>MapTreatyBranch</c> on SQLite) whose logs are captured.</summary>
public sealed class BranchTelemetryFixture : IAsyncLifetime
{
    private readonly TempDir _dir = new("treaty-kit-telemetry");
    private WebApplication? _participant;

    public CapturingLoggerProvider Logs { get; } = new();

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public Uri ParticipantAddress { get; private set; } = null!;

    /// <summary>The participant's branch endpoint; branch <c>declined</c> answers 409 to its action.</summary>
    public string Url(string branch) => new Uri(ParticipantAddress, "branch/" + branch).AbsoluteUri;

    public async Task InitializeAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Debug);
        builder.Logging.AddProvider(Logs);
        builder.Services.AddSingleton<ParticipantDatabase>(new SqliteParticipantDatabase(Path.Combine(_dir.Path, "participant.db")));
        builder.Services.AddTreatyBarrier();
        _participant = builder.Build();
        _participant.MapTreatyBranch("/branch/{name}", (context, _) => Task.FromResult(
            context.Branch == "declined" && context.Op == "action"
                ? context.Fail(409, "https://example.test/declined", "Declined")
                : context.Ok()));
        await _participant.StartAsync();
        ParticipantAddress = new Uri(_participant.Urls.Single());
        Coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-kit-telemetry-coordinator");
    }

    public async Task DisposeAsync()
    {
        if (Coordinator is not null)
        {
            await Coordinator.DisposeAsync();
        }

        if (_participant is not null)
        {
            await _participant.StopAsync();
            await _participant.DisposeAsync();
        }

        _dir.Dispose();
    }
}
