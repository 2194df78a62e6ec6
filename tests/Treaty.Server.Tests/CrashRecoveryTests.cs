using System.Net;
using Treaty.Cli;
using Treaty.Core.Contracts;
using Treaty.Server.Tests.Support;
using Xunit.Abstractions;

namespace Treaty.Server.Tests;

/// <summary>
/// The coordinator runs as a separate process (<c>treaty serve</c>) and is killed with SIGKILL while a
/// call is in flight; a new process on the same data directory finishes the transaction, and every
/// effect lands exactly once at the participant even though the interrupted call is made twice.
/// </summary>
public sealed class CrashRecoveryTests(ParticipantFixture fixture, ITestOutputHelper output) : IClassFixture<ParticipantFixture>
{
    private readonly Participant _participant = fixture.Participant;

    private string Url(string gid, string branch, string op) => _participant.Url($"{gid}/{branch}/{op}");

    [Theory]
    [InlineData(true)]
    [InlineData(false)] // a saga without payload: the reloaded state must still make valid calls
    public async Task Coordinator_KilledWhileAnActionIsInFlight_NewProcessCommitsWithEveryEffectOnce(bool withPayload)
    {
        var gid = Api.NewGid("crash");
        var payload = withPayload ? Api.PayloadNode() : null;
        var held = _participant.Hold($"{gid}/s2/action");
        await using var coordinator = new CoordinatorProcess(output);
        try
        {
            using var http = await coordinator.StartAsync();
            using (var submitted = await Api.SubmitAsync(http, Json.Saga(gid, payload,
                Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
                Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate")),
                Json.Step("s3", Url(gid, "s3", "action"), Url(gid, "s3", "compensate")))))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            await Api.WaitUntilAsync(http, gid, v => v.Op("s2", "action").Status == "in-flight", "s2.action in flight");
            await Eventually.Until(() => _participant.CallsTo($"{gid}/s2/action").Count == 1, "s2.action reached the participant");

            coordinator.Kill();
        }
        finally
        {
            // The participant finishes its work after the coordinator died: the effect lands, the answer is lost.
            held.Open();
        }

        await Eventually.Until(() => _participant.Applied($"{gid}/s2/action"), "the first s2 call applied its effect");
        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "committed");
            view.Op("s2", "action").Attempts.ShouldBe(2);
            view.Op("s1", "action").Attempts.ShouldBe(1);
            view.Op("s3", "action").Attempts.ShouldBe(1);

            var events = (await Api.EventsAsync(http, gid)).Events;
            events.ShouldContain(e => e.Kind == "resumed");
            var lost = events.Single(e => e is { Kind: "attempt-unknown", Branch: "s2", Op: "action" });
            lost.Attempt.ShouldBe(1);
            lost.Detail.ShouldNotBeNull().ShouldContain("outcome lost");
            events.ShouldContain(e => e.Kind == "attempt-succeeded" && e.Branch == "s2" && e.Op == "action" && e.Attempt == 2);
            events[^1].Kind.ShouldBe("committed");
        }

        var s2Calls = _participant.CallsTo($"{gid}/s2/action");
        s2Calls.Count.ShouldBe(2);
        s2Calls.Select(c => c.IdempotencyKey).Distinct().ShouldBe([$"{gid}/s2/action"]);
        foreach (var call in s2Calls)
        {
            using var body = System.Text.Json.JsonDocument.Parse(call.Body);
            body.RootElement.GetProperty("payload").GetRawText().ShouldBe(payload?.ToJsonString() ?? "null");
        }
        foreach (var step in new[] { "s1", "s2", "s3" })
        {
            _participant.EffectsOn($"{gid}/{step}/action").ShouldBe(1, step);
            _participant.CallsTo($"{gid}/{step}/compensate").ShouldBeEmpty();
        }

        _participant.CallsTo($"{gid}/s1/action").Count.ShouldBe(1);
        _participant.CallsTo($"{gid}/s3/action").Count.ShouldBe(1);
    }

    [Fact]
    public async Task Coordinator_KilledWhileACompensationIsInFlight_NewProcessAbortsWithEveryCompensationOnce()
    {
        var gid = Api.NewGid("crashcomp");
        _participant.Always($"{gid}/s3/action", 409);
        var held = _participant.Hold($"{gid}/s2/compensate");
        await using var coordinator = new CoordinatorProcess(output);
        try
        {
            using var http = await coordinator.StartAsync();
            using (var submitted = await Api.SubmitAsync(http, Json.Saga(gid, Api.PayloadNode(),
                Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate")),
                Json.Step("s2", Url(gid, "s2", "action"), Url(gid, "s2", "compensate")),
                Json.Step("s3", Url(gid, "s3", "action"), Url(gid, "s3", "compensate")))))
            {
                submitted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await submitted.Content.ReadAsStringAsync());
            }

            var aborting = await Api.WaitUntilAsync(http, gid, v => v.Op("s2", "compensate").Status == "in-flight", "s2.compensate in flight");
            aborting.Status.ShouldBe("aborting");
            await Eventually.Until(() => _participant.CallsTo($"{gid}/s2/compensate").Count == 1, "s2.compensate reached the participant");

            coordinator.Kill();
        }
        finally
        {
            held.Open();
        }

        await Eventually.Until(() => _participant.Applied($"{gid}/s2/compensate"), "the first s2 compensation applied its effect");
        using (var http = await coordinator.StartAsync())
        {
            var view = await Api.WaitForStatusAsync(http, gid, "aborted");
            view.Branch("s1").Status.ShouldBe("compensated");
            view.Branch("s2").Status.ShouldBe("compensated");
            view.Branch("s3").Status.ShouldBe("failed");
            view.Op("s2", "compensate").Attempts.ShouldBe(2);
            view.Reason.ShouldNotBeNull().ShouldContain("s3.action failed");

            var events = (await Api.EventsAsync(http, gid)).Events;
            events.ShouldContain(e => e.Kind == "resumed");
            events.Single(e => e is { Kind: "attempt-unknown", Branch: "s2", Op: "compensate" })
                .Detail.ShouldNotBeNull().ShouldContain("outcome lost");
            events[^1].Kind.ShouldBe("aborted");
        }

        _participant.CallsTo($"{gid}/s2/compensate").Count.ShouldBe(2);
        _participant.EffectsOn($"{gid}/s2/compensate").ShouldBe(1);
        _participant.EffectsOn($"{gid}/s1/compensate").ShouldBe(1);
        _participant.CallsTo($"{gid}/s1/compensate").Single().Seq
            .ShouldBeGreaterThan(_participant.CallsTo($"{gid}/s2/compensate").Max(c => c.Seq));
        _participant.CallsTo($"{gid}/s3/compensate").ShouldBeEmpty();
        foreach (var step in new[] { "s1", "s2" })
        {
            _participant.EffectsOn($"{gid}/{step}/action").ShouldBe(1, step);
        }
    }

    [Fact]
    public async Task Coordinator_KilledAfterCommit_NewProcessServesTheFinishedTransaction()
    {
        var gid = Api.NewGid("durable");
        await using var coordinator = new CoordinatorProcess(output);
        using (var http = await coordinator.StartAsync())
        {
            using var submitted = await Api.SubmitAsync(http, Json.Saga(gid, Api.PayloadNode(),
                Json.Step("s1", Url(gid, "s1", "action"), Url(gid, "s1", "compensate"))), "?wait=20s");
            submitted.StatusCode.ShouldBe(HttpStatusCode.OK, await submitted.Content.ReadAsStringAsync());
            coordinator.Kill();
        }

        using (var http = await coordinator.StartAsync())
        {
            var view = (await Api.GetAsync(http, gid)).ShouldNotBeNull();
            view.Status.ShouldBe("committed");
            (await Api.ListAsync(http)).Items.ShouldContain(i => i.Gid == gid);
        }

        _participant.CallsTo($"{gid}/s1/action").Count.ShouldBe(1);
    }
}
