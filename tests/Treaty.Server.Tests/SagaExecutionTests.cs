using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using Treaty.Client;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>How the coordinator drives sagas against a real participant: failures, DAGs, retries, timeouts.</summary>
public sealed class SagaExecutionTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Http;
    private readonly TreatyClient _client = fixture.Client;

    private string Url(string gid, string branch, string op) => _participant.Url($"{gid}/{branch}/{op}");

    [Fact]
    public async Task Saga_StepFailsDefinitively_AbortsAndCompensatesOnlyTheAppliedStepsAfterTheFailure()
    {
        var gid = Api.NewGid("fail");
        _participant.Always($"{gid}/s2/action", 409);

        var view = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
            .Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))
            .Step("s3", Url(gid, "s3", "action"), Url(gid, "s3", "compensate"))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("aborted");
        view.IsAborted().ShouldBeTrue();
        view.Reason.ShouldNotBeNull().ShouldContain("s2.action failed");
        view.Branch("s1").Status.ShouldBe("compensated");
        view.Branch("s2").Status.ShouldBe("failed");
        view.Branch("s3").Status.ShouldBe("pending");
        view.Op("s2", "action").LastStatusCode.ShouldBe(409);
        view.Op("s2", "action").Attempts.ShouldBe(1); // a definitive answer is not retried
        view.Op("s2", "compensate").Attempts.ShouldBe(0);
        view.Op("s3", "action").Attempts.ShouldBe(0);

        var failed = _participant.CallsTo($"{gid}/s2/action").ShouldHaveSingleItem();
        var compensation = _participant.CallsTo($"{gid}/s1/compensate").ShouldHaveSingleItem();
        compensation.Seq.ShouldBeGreaterThan(failed.CompletedSeq);
        compensation.Op.ShouldBe("compensate");
        compensation.IdempotencyKey.ShouldBe($"{gid}/s1/compensate");
        _participant.CallsTo($"{gid}/s2/compensate").ShouldBeEmpty();
        _participant.CallsUnder($"{gid}/s3/").ShouldBeEmpty();
        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1);
        _participant.EffectsOn($"{gid}/s1/compensate").ShouldBe(1);
        _participant.EffectsOn($"{gid}/s2/action").ShouldBe(0);

        var events = (await _client.GetEventsAsync(gid)).Events;
        events.ShouldContain(e => e.Kind == "attempt-failed" && e.Branch == "s2" && e.StatusCode == 409);
        events.ShouldContain(e => e.Kind == "aborting");
        events[^1].Kind.ShouldBe("aborted");
    }

    [Fact]
    public async Task Dag_TwoRootsAndAJoin_RootsRunInParallelBeforeTheJoin()
    {
        var gid = Api.NewGid("dag");
        // Each root takes a while, so running them one after the other could not overlap.
        _participant.Delay($"{gid}/a/action", TimeSpan.FromMilliseconds(400));
        _participant.Delay($"{gid}/b/action", TimeSpan.FromMilliseconds(400));

        var view = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("a", Url(gid, "a", "action"), Url(gid, "a", "compensate"), dependsOn: [])
            .Step("b", Url(gid, "b", "action"), Url(gid, "b", "compensate"), dependsOn: [])
            .Step("join", Url(gid, "join", "action"), Url(gid, "join", "compensate"), dependsOn: ["a", "b"])
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed");
        view.Branch("join").DependsOn.ShouldBe(["a", "b"], ignoreOrder: true);
        var a = _participant.CallsTo($"{gid}/a/action").ShouldHaveSingleItem();
        var b = _participant.CallsTo($"{gid}/b/action").ShouldHaveSingleItem();
        var join = _participant.CallsTo($"{gid}/join/action").ShouldHaveSingleItem();
        // Parallel: each root arrived before the other answered.
        a.Seq.ShouldBeLessThan(b.CompletedSeq);
        b.Seq.ShouldBeLessThan(a.CompletedSeq);
        // The join waited for both.
        join.Seq.ShouldBeGreaterThan(Math.Max(a.CompletedSeq, b.CompletedSeq));
    }

    [Fact]
    public async Task Dag_JoinFails_BothRootsAreCompensated()
    {
        var gid = Api.NewGid("dagfail");
        _participant.Always($"{gid}/join/action", 422);
        var body = Json.Saga(gid, Api.PayloadNode(),
            Json.Step("a", Url(gid, "a", "action"), Url(gid, "a", "compensate"), dependsOn: []),
            Json.Step("b", Url(gid, "b", "action"), Url(gid, "b", "compensate"), dependsOn: []),
            Json.Step("join", Url(gid, "join", "action"), Url(gid, "join", "compensate"), dependsOn: ["a", "b"]));

        using var response = await Api.SubmitAsync(_http, body, "?wait=20s");

        response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        var view = await Api.ReadViewAsync(response);
        view.Status.ShouldBe("aborted");
        view.Branch("a").Status.ShouldBe("compensated");
        view.Branch("b").Status.ShouldBe("compensated");
        view.Branch("join").Status.ShouldBe("failed");
        var joinCall = _participant.CallsTo($"{gid}/join/action").ShouldHaveSingleItem();
        joinCall.Seq.ShouldBeGreaterThan(Math.Max(
            _participant.CallsTo($"{gid}/a/action").Single().CompletedSeq,
            _participant.CallsTo($"{gid}/b/action").Single().CompletedSeq));
        _participant.CallsTo($"{gid}/a/compensate").ShouldHaveSingleItem().Seq.ShouldBeGreaterThan(joinCall.CompletedSeq);
        _participant.CallsTo($"{gid}/b/compensate").ShouldHaveSingleItem().Seq.ShouldBeGreaterThan(joinCall.CompletedSeq);
        _participant.CallsTo($"{gid}/join/compensate").ShouldBeEmpty();
    }

    [Fact]
    public async Task Saga_ParticipantAnswers503Twice_RetriesWithTheSameIdempotencyKeyAndCommits()
    {
        var gid = Api.NewGid("retry");
        _participant.FailTimes($"{gid}/s1/action", 2, 503);
        var payload = JsonSerializer.SerializeToElement(new JsonObject
        {
            ["orderId"] = "o-1",
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 2 }),
            ["note"] = "ünïcode ✓",
        });

        var view = await _client.Saga(gid)
            .WithPayload(payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
            .WithRetry(5, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed");
        view.Op("s1", "action").Attempts.ShouldBe(3);
        view.Op("s1", "action").LastStatusCode.ShouldBe(200);
        var calls = _participant.CallsTo($"{gid}/s1/action");
        calls.Count.ShouldBe(3);
        calls.Select(c => c.Status).ShouldBe([503, 503, 200]);
        foreach (var call in calls)
        {
            call.IdempotencyKey.ShouldBe($"{gid}/s1/action");
            call.Gid.ShouldBe(gid);
            call.Branch.ShouldBe("s1");
            call.Op.ShouldBe("action");
            call.ContentType.ShouldNotBeNull().ShouldStartWith("application/json");
            using var body = JsonDocument.Parse(call.Body);
            body.RootElement.GetProperty("gid").GetString().ShouldBe(gid);
            body.RootElement.GetProperty("branch").GetString().ShouldBe("s1");
            body.RootElement.GetProperty("op").GetString().ShouldBe("action");
            JsonElement.DeepEquals(body.RootElement.GetProperty("payload"), payload).ShouldBeTrue(call.Body);
        }

        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1);
        var events = (await _client.GetEventsAsync(gid)).Events;
        events.Where(e => e is { Kind: "attempt-unknown", Branch: "s1" }).Select(e => e.StatusCode).ShouldBe([503, 503]);
        events.Where(e => e is { Kind: "attempt-started", Branch: "s1" }).Select(e => e.Attempt).ShouldBe([1, 2, 3]);
    }

    [Theory]
    [InlineData(408)]
    [InlineData(429)]
    [InlineData(500)]
    public async Task Saga_RetryableStatus_IsRetriedNotFailed(int status)
    {
        var gid = Api.NewGid("retryable");
        _participant.FailTimes($"{gid}/s1/action", 1, status);

        var view = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"), retry: new RetrySettings(3, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50)))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed");
        view.Op("s1", "action").Attempts.ShouldBe(2);
    }

    [Fact]
    public async Task Saga_ActionRunsOutOfAttempts_IsCompensatedBecauseItMayHaveApplied()
    {
        var gid = Api.NewGid("exhausted");
        _participant.Always($"{gid}/s2/action", 503);

        var view = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
            .Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"), retry: new RetrySettings(2, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50)))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("aborted");
        view.Op("s2", "action").Status.ShouldBe("exhausted");
        view.Op("s2", "action").Attempts.ShouldBe(2);
        view.Branch("s2").Status.ShouldBe("compensated");
        view.Branch("s1").Status.ShouldBe("compensated");
        // Reverse order: s2's compensation before s1's.
        _participant.CallsTo($"{gid}/s1/compensate").Single().Seq
            .ShouldBeGreaterThan(_participant.CallsTo($"{gid}/s2/compensate").Single().CompletedSeq);
    }

    [Fact]
    public async Task Saga_StepHangsPastTheTransactionTimeout_AbortsWithReasonTimedOut()
    {
        var gid = Api.NewGid("timeout");
        var hang = _participant.Hold($"{gid}/s2/action");
        try
        {
            var body = Json.Saga(gid, Api.PayloadNode(),
                Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
                Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate")),
                Json.Step("s3", Url(gid, "s3", "action"), Url(gid, "s3", "compensate")));
            body["timeoutMs"] = 500;
            using (var response = await Api.SubmitAsync(_http, body))
            {
                response.StatusCode.ShouldBe(HttpStatusCode.Accepted);
                var submitted = await Api.ReadViewAsync(response);
                submitted.Deadline.ShouldNotBeNull().ShouldBe(submitted.CreatedAt.AddMilliseconds(500));
            }

            // The deadline passes while s2 hangs: the saga turns back (and waits for s2's answer).
            var aborting = await Api.WaitUntilAsync(_http, gid, v => v.Status == "aborting", "aborting on its deadline");
            aborting.Reason.ShouldBe("transaction timed out");
            _participant.CallsTo($"{gid}/s1/compensate").ShouldBeEmpty();
        }
        finally
        {
            hang.Open();
        }

        var view = await Api.WaitForStatusAsync(_http, gid, "aborted");
        view.Reason.ShouldBe("transaction timed out");
        // s2's late success may have applied it: both steps are undone, s2 first.
        view.Branch("s1").Status.ShouldBe("compensated");
        view.Branch("s2").Status.ShouldBe("compensated");
        view.Op("s3", "action").Attempts.ShouldBe(0);
        _participant.CallsTo($"{gid}/s1/compensate").Single().Seq
            .ShouldBeGreaterThan(_participant.CallsTo($"{gid}/s2/compensate").Single().CompletedSeq);
        _participant.CallsUnder($"{gid}/s3/").ShouldBeEmpty();
        (await Api.EventsAsync(_http, gid)).Events.ShouldContain(e => e.Kind == "aborting" && e.Detail == "transaction timed out");
    }

    [Fact]
    public async Task Saga_BranchCallTimesOut_IsRetriedAsUnknown()
    {
        var gid = Api.NewGid("calltimeout");
        _participant.Script($"{gid}/s1/action", [new Reply(200, TimeSpan.FromSeconds(3))]);

        var view = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"),
                timeout: TimeSpan.FromMilliseconds(300), retry: new RetrySettings(3, TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(50)))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed");
        view.Op("s1", "action").Attempts.ShouldBe(2);
        (await _client.GetEventsAsync(gid)).Events
            .ShouldContain(e => e.Kind == "attempt-unknown" && e.Branch == "s1" && e.Detail!.Contains("no answer within 300 ms"));
        // The first call's effect lands late; the retry carries the same key, so it is applied once.
        await Eventually.Until(() => _participant.CallsTo($"{gid}/s1/action")[0].Status == 200, "the slow first call finished");
        _participant.EffectsOn($"{gid}/s1/action").ShouldBe(1);
    }
}
