using System.Collections.Concurrent;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>
/// W3C trace context on branch calls: every call of a transaction carries a <c>traceparent</c>, all
/// of them (retries and compensations included) in one trace, and each transaction in its own.
/// </summary>
public sealed partial class TraceContextTests(TraceContextFixture fixture) : IClassFixture<TraceContextFixture>
{
    private readonly TraceRecordingParticipant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Coordinator.Http;

    [Fact]
    public async Task BranchCalls_OfACommittedSaga_EachCarryAWellFormedTraceparent()
    {
        var gid = Api.NewGid("trace");
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", _participant.Url("ok"), _participant.Url("ok")),
            Json.Step("s2", _participant.Url("ok"), _participant.Url("ok")),
            Json.Step("s3", _participant.Url("ok"), pivot: true)));
        await Api.WaitForStatusAsync(_http, gid, "committed");

        var calls = _participant.CallsOf(gid);

        calls.Select(c => c.Branch).ShouldBe(["s1", "s2", "s3"]);
        foreach (var call in calls)
        {
            call.Traceparent.Count.ShouldBe(1, $"{call.Branch}: one traceparent header");
            var value = call.Traceparent[0].ShouldNotBeNull();
            TraceparentFormat().IsMatch(value).ShouldBeTrue($"{call.Branch}: '{value}' is not 00-<32 hex>-<16 hex>-<2 hex>");
            TraceId(value).ShouldNotBe(new string('0', 32)); // all-zero ids are invalid in W3C trace context
            value.Split('-')[2].ShouldNotBe(new string('0', 16));
        }

        calls.Select(c => TraceId(c.Traceparent[0]!)).Distinct().Count().ShouldBe(1);
    }

    [Fact]
    public async Task BranchCalls_RetriesAndCompensationsOfOneTransaction_ShareOneTraceId()
    {
        var gid = Api.NewGid("trace-retry");
        await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
            Json.Step("s1", _participant.Url("ok"), _participant.Url("ok")),
            Json.Step("s2", _participant.Url("flaky"), _participant.Url("ok"), retry: Json.Retry(5, 10, 20)),
            Json.Step("s3", _participant.Url("conflict"), _participant.Url("ok"))));
        var done = await Api.WaitForStatusAsync(_http, gid, "aborted");

        var calls = _participant.CallsOf(gid);

        done.Op("s2", "action").Attempts.ShouldBe(TraceRecordingParticipant.FlakyFailures + 1);
        calls.Count(c => c is { Branch: "s2", Op: "action" }).ShouldBe(TraceRecordingParticipant.FlakyFailures + 1);
        calls.Select(c => c.Attempt).ShouldContain("3"); // a retry went over the wire
        calls.ShouldContain(c => c.Op == "compensate");
        calls.ShouldAllBe(c => c.Traceparent.Count == 1 && TraceparentFormat().IsMatch(c.Traceparent[0]!));
        var traceIds = calls.Select(c => TraceId(c.Traceparent[0]!)).Distinct().ToList();
        traceIds.Count.ShouldBe(1, string.Join(Environment.NewLine, calls.Select(c => $"{c.Branch}.{c.Op}#{c.Attempt}: {c.Traceparent}")));
    }

    [Fact]
    public async Task BranchCalls_OfTwoTransactions_HaveDifferentTraceIds()
    {
        var first = Api.NewGid("trace-a");
        var second = Api.NewGid("trace-b");
        foreach (var gid in new[] { first, second })
        {
            await SubmitAsync(Json.Saga(gid, Api.PayloadNode(),
                Json.Step("s1", _participant.Url("ok"), _participant.Url("ok")),
                Json.Step("s2", _participant.Url("ok"), _participant.Url("ok"))));
        }

        await Api.WaitForStatusAsync(_http, first, "committed");
        await Api.WaitForStatusAsync(_http, second, "committed");

        var firstIds = _participant.CallsOf(first).Select(c => TraceId(c.Traceparent[0]!)).Distinct().ToList();
        var secondIds = _participant.CallsOf(second).Select(c => TraceId(c.Traceparent[0]!)).Distinct().ToList();

        firstIds.Count.ShouldBe(1);
        secondIds.Count.ShouldBe(1);
        firstIds[0].ShouldNotBe(secondIds[0]);
    }

    private async Task SubmitAsync(System.Text.Json.Nodes.JsonObject body)
    {
        using var response = await Api.SubmitAsync(_http, body);
        response.IsSuccessStatusCode.ShouldBeTrue(await response.Content.ReadAsStringAsync());
    }

    private static string TraceId(string traceparent) => traceparent.Split('-')[1];

    [GeneratedRegex("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    private static partial Regex TraceparentFormat();
}

/// <summary>One branch call with the headers these tests look at.</summary>
public sealed record TracedCall(long Seq, string Gid, string? Branch, string? Op, string? Attempt, Microsoft.Extensions.Primitives.StringValues Traceparent);

/// <summary>
/// A participant that records the <c>traceparent</c> of every call (the shared <see cref="Participant"/>
/// keeps only the Treaty headers). <c>/ok</c> answers 200, <c>/conflict</c> 409, <c>/flaky</c> 503 for
/// the first <see cref="FlakyFailures"/> calls of each transaction and 200 after.
/// </summary>
public sealed class TraceRecordingParticipant : IAsyncDisposable
{
    public const int FlakyFailures = 2;

    private readonly WebApplication _app;
    private readonly ConcurrentQueue<TracedCall> _calls = new();
    private readonly ConcurrentDictionary<string, int> _flakyCalls = new(StringComparer.Ordinal);
    private long _seq;

    private TraceRecordingParticipant(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public static async Task<TraceRecordingParticipant> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = builder.Build();
        var participant = new TraceRecordingParticipant(app);
        app.Run(participant.Handle);
        await app.StartAsync();
        participant.BaseAddress = new Uri(app.Urls.Single());
        return participant;
    }

    public string Url(string path) => new Uri(BaseAddress, path).AbsoluteUri;

    /// <summary>The calls of transaction <paramref name="gid"/>, in arrival order.</summary>
    public IReadOnlyList<TracedCall> CallsOf(string gid) => [.. _calls.Where(c => c.Gid == gid).OrderBy(c => c.Seq)];

    public async ValueTask DisposeAsync()
    {
        using var stopTimeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(stopTimeout.Token);
        }
        finally
        {
            await _app.DisposeAsync();
        }
    }

    private Task Handle(HttpContext context)
    {
        var headers = context.Request.Headers;
        var gid = headers["Treaty-Gid"].ToString();
        _calls.Enqueue(new TracedCall(
            Interlocked.Increment(ref _seq),
            gid,
            headers["Treaty-Branch"].FirstOrDefault(),
            headers["Treaty-Op"].FirstOrDefault(),
            headers["Treaty-Attempt"].FirstOrDefault(),
            headers["traceparent"]));

        context.Response.StatusCode = context.Request.Path.Value switch
        {
            "/conflict" => StatusCodes.Status409Conflict,
            "/flaky" when _flakyCalls.AddOrUpdate(gid, 1, (_, n) => n + 1) <= FlakyFailures => StatusCodes.Status503ServiceUnavailable,
            _ => StatusCodes.Status200OK,
        };
        return Task.CompletedTask;
    }
}

/// <summary>A coordinator and a trace-recording participant, shared by <see cref="TraceContextTests"/>.</summary>
public sealed class TraceContextFixture : IAsyncLifetime
{
    public TraceRecordingParticipant Participant { get; private set; } = null!;

    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        try
        {
            Participant = await TraceRecordingParticipant.StartAsync();
            Coordinator = await InProcessCoordinator.StartAsync();
        }
        catch
        {
            await DisposeAsync(); // a fixture whose InitializeAsync failed may not be disposed by xunit
            throw;
        }
    }

    /// <summary>Idempotent: it also runs when <see cref="InitializeAsync"/> fails.</summary>
    public async Task DisposeAsync()
    {
        var (coordinator, participant) = (Coordinator, Participant);
        (Coordinator, Participant) = (null!, null!);
        try
        {
            if (coordinator is not null)
            {
                await coordinator.DisposeAsync();
            }
        }
        finally
        {
            if (participant is not null)
            {
                await participant.DisposeAsync();
            }
        }
    }
}
