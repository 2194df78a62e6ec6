using System.Net;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests;

/// <summary>Stuck transactions and the operator actions retry and abort.</summary>
public sealed class OperatorTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private readonly Participant _participant = fixture.Participant;
    private readonly HttpClient _http = fixture.Http;
    private readonly TreatyClient _client = fixture.Client;

    private string Url(string gid, string branch, string op) => _participant.Url($"{gid}/{branch}/{op}");

    [Fact]
    public async Task Compensation_KeepsFailing_TransactionIsStuckUntilOperatorRetryAfterRecovery()
    {
        var gid = Api.NewGid("stuck");
        _participant.Always($"{gid}/s1/compensate", 503);
        _participant.Always($"{gid}/s2/action", 409);
        // Two attempts, then stuck. The capped delay (which is also the cadence of retries once
        // stuck) is long, so after the participant recovers only the operator's retry can finish it;
        // with a short cap the coordinator would heal it by itself and the retry would race it.
        var retry = new RetrySettings(2, TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1));
        var submitted = await _client.Saga(gid).WithPayload(Api.Payload)
            .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"), retry: retry)
            .Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))
            .SubmitAsync();
        submitted.Gid.ShouldBe(gid);

        var stuck = await Api.WaitUntilAsync(_http, gid, v => v.Stuck, "stuck");
        stuck.Status.ShouldBe("aborting");
        var cause = stuck.StuckOn.ShouldNotBeNull();
        (cause.Branch, cause.Op, cause.Attempts, cause.LastStatusCode).ShouldBe(("s1", "compensate", 2, 503));
        stuck.Reason.ShouldNotBeNull().ShouldContain("s2.action failed"); // why it aborts, apart from why it is stuck
        stuck.Phase.ShouldBe("compensate");
        stuck.Decision.ShouldBe("abort");
        stuck.Op("s1", "compensate").Attempts.ShouldBe(2);
        stuck.Op("s1", "compensate").Status.ShouldBe("waiting");
        stuck.Op("s1", "compensate").LastStatusCode.ShouldBe(503);
        (await _client.ListAsync(new TransactionListQuery { Stuck = true, Limit = 500 })).Items.ShouldContain(i => i.Gid == gid && i.Stuck);
        (await Api.ListAsync(_http, "?stuck=false&limit=500")).Items.ShouldNotContain(i => i.Gid == gid);
        var events = (await _client.GetEventsAsync(gid)).Events;
        events.Count(e => e.Kind == "stuck").ShouldBe(1);
        _participant.CallsTo($"{gid}/s1/compensate").Count.ShouldBe(2);

        _participant.Recover($"{gid}/s1/compensate");
        using (var response = await _http.PostAsync($"{Api.Transactions}/{gid}/retry", null))
        {
            response.StatusCode.ShouldBe(HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
            var afterRetry = await Api.ReadViewAsync(response);
            afterRetry.Stuck.ShouldBeFalse();
        }

        var done = await Api.WaitForStatusAsync(_http, gid, "aborted");
        done.Stuck.ShouldBeFalse();
        done.Branch("s1").Status.ShouldBe("compensated");
        done.Op("s1", "compensate").Attempts.ShouldBe(3);
        _participant.EffectsOn($"{gid}/s1/compensate").ShouldBe(1);
        _participant.CallsTo($"{gid}/s1/compensate").Select(c => c.IdempotencyKey).Distinct().ShouldBe([$"{gid}/s1/compensate"]);
        (await Api.ListAsync(_http, "?stuck=true&limit=500")).Items.ShouldNotContain(i => i.Gid == gid);
        (await _client.GetEventsAsync(gid)).Events.ShouldContain(e => e.Kind == "operator-retry" && e.Detail!.Contains("anonymous@127.0.0.1"));
    }

    [Fact]
    public async Task Retry_TerminalTransaction_Returns409()
    {
        var gid = Api.NewGid("retrydone");
        (await _client.Saga(gid).WithPayload(Api.Payload).Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")).SubmitAsync(wait: Wait))
            .Status.ShouldBe("committed");

        using var response = await _http.PostAsync($"{Api.Transactions}/{gid}/retry", null);
        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.Conflict);
        problem.Type.ShouldEndWith("invalid-state");
        problem.Detail.ShouldNotBeNull().ShouldContain("committed");

        var ex = await Should.ThrowAsync<TreatyApiException>(() => _client.AbortAsync(gid));
        ex.StatusCode.ShouldBe(409);
        (await _client.GetAsync(gid))!.Status.ShouldBe("committed");
    }

    [Theory]
    [InlineData("retry")]
    [InlineData("abort")]
    public async Task OperatorAction_UnknownGid_Returns404(string action)
    {
        using var response = await _http.PostAsync($"{Api.Transactions}/{Api.NewGid("ghost")}/{action}", null);
        (await Api.ReadProblemAsync(response, HttpStatusCode.NotFound)).Type.ShouldEndWith("not-found");
    }

    [Fact]
    public async Task Abort_RunningTransactionWithSlowStep_CompensatesItsAppliedSteps()
    {
        var gid = Api.NewGid("abort");
        var slow = _participant.Hold($"{gid}/s2/action");
        try
        {
            await _client.Saga(gid).WithPayload(Api.Payload)
                .Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))
                .Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate"))
                .Step("s3", Url(gid, "s3", "action"), Url(gid, "s3", "compensate"))
                .SubmitAsync();
            await Api.WaitUntilAsync(_http, gid, v => v.Op("s2", "action").Status == "in-flight", "s2 in flight");
            await Eventually.Until(() => _participant.CallsTo($"{gid}/s2/action").Count == 1, "s2 reached the participant");

            var aborting = await _client.AbortAsync(gid, "customer cancelled");
            aborting.Status.ShouldBe("aborting");
            aborting.Reason.ShouldNotBeNull().ShouldContain("customer cancelled");
        }
        finally
        {
            slow.Open();
        }

        var view = await Api.WaitForStatusAsync(_http, gid, "aborted");
        view.Branch("s1").Status.ShouldBe("compensated");
        view.Branch("s2").Status.ShouldBe("compensated"); // its late success may have applied it
        view.Branch("s3").Status.ShouldBe("pending");
        _participant.CallsUnder($"{gid}/s3/").ShouldBeEmpty();
        _participant.EffectsOn($"{gid}/s1/compensate").ShouldBe(1);
        _participant.EffectsOn($"{gid}/s2/compensate").ShouldBe(1);
        var events = (await _client.GetEventsAsync(gid)).Events;
        events.ShouldContain(e => e.Kind == "operator-abort" && e.Detail!.Contains("customer cancelled"));
    }

    [Fact]
    public async Task Abort_AfterThePivotStarted_Returns409AndTheSagaCommits()
    {
        var gid = Api.NewGid("pivot");
        var pivot = _participant.Hold($"{gid}/ship/action");
        try
        {
            await _client.Saga(gid).WithPayload(Api.Payload)
                .Step("pay", Url(gid, "pay", "action"), Url(gid, "pay", "compensate"))
                .Step("ship", Url(gid, "ship", "action"), pivot: true)
                .Step("notify", Url(gid, "notify", "action"))
                .SubmitAsync();
            await Api.WaitUntilAsync(_http, gid, v => v.Op("ship", "action").Status == "in-flight", "pivot in flight");

            using var response = await _http.PostAsync($"{Api.Transactions}/{gid}/abort", null);
            var problem = await Api.ReadProblemAsync(response, HttpStatusCode.Conflict);
            problem.Type.ShouldBe(ProblemTypes.InvalidState);
        }
        finally
        {
            pivot.Open();
        }

        var view = await Api.WaitForStatusAsync(_http, gid, "committed");
        view.Branch("notify").Status.ShouldBe("succeeded");
        _participant.CallsTo($"{gid}/pay/compensate").ShouldBeEmpty();
    }
}
