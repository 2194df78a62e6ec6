using System.Net;
using System.Text.Json;
using Treaty.Client;
using Treaty.Core.Contracts;
using Treaty.Server.Tests.Security;
using Treaty.Server.Tests.Support;
using Treaty.Testing;

namespace Treaty.Server.Tests;

/// <summary>Choreographed sagas reported by their services: shown, watched and flagged like any transaction.</summary>
public sealed class ChoreographyTests
{
    private const string Events = "/api/v1/choreography/events";

    private static ChoreographyEventRequest Event(string gid, string id, string type, string service, string? outcome = null, long? timeoutMs = null) =>
        new(id, type, service, gid) { Outcome = outcome, TimeoutMs = timeoutMs, Payload = JsonSerializer.SerializeToElement(new Dictionary<string, string> { ["orderId"] = gid }) };

    private static string EventJson(string gid, string id, string type, string service, string extra = "") =>
        $$"""{ "messageId": "{{id}}", "type": "{{type}}", "service": "{{service}}", "correlationId": "{{gid}}"{{extra}} }""";

    [Fact]
    public async Task ReportedEvents_CreateAndEndTheSaga_ViewShowsServicesTimelineAndFilter()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync();
        var gid = Api.NewGid("choreo");

        // A single event creates the transaction.
        using (var first = await Api.PostAsync(coordinator.Http, Events, EventJson(gid, "m1", "order.created", "order", """, "payload": {"amount": 25}, "at": "2026-12-06T20:00:00Z" """)))
        {
            first.StatusCode.ShouldBe(HttpStatusCode.OK, await first.Content.ReadAsStringAsync());
        }

        (await Api.GetAsync(coordinator.Http, gid)).ShouldNotBeNull().ShouldSatisfyAllConditions(
            v => v.Protocol.ShouldBe("choreography"),
            v => v.Status.ShouldBe("running"),
            v => v.Branches.ShouldHaveSingleItem().Name.ShouldBe("order"));

        // A batch through the SDK, with a duplicate the outbox relayed twice.
        var report = await coordinator.Client.ReportEventsAsync(
        [
            Event(gid, "m2", "payment.reserved", "payment"),
            Event(gid, "m2", "payment.reserved", "payment"),
            Event(gid, "m1", "order.created", "order"),
            Event(gid, "m3", "inventory.failed", "inventory"),
            Event(gid, "m4", "payment.refunded", "payment"),
            Event(gid, "m5", "order.cancelled", "order", outcome: "compensated"),
        ]);
        report.Events.Select(e => e.Result).ShouldBe(["recorded", "duplicate", "duplicate", "recorded", "recorded", "recorded"]);
        report.Events[^1].Status.ShouldBe("aborted");

        // Late: recorded after the end, the outcome stands.
        var late = await coordinator.Client.ReportEventsAsync([Event(gid, "m6", "order.confirmed", "order", outcome: "completed")]);
        late.Events.ShouldHaveSingleItem().ShouldSatisfyAllConditions(e => e.Result.ShouldBe("recorded"), e => e.Status.ShouldBe("aborted"));

        var view = (await Api.GetAsync(coordinator.Http, gid)).ShouldNotBeNull();
        view.Status.ShouldBe("aborted");
        view.Reason.ShouldNotBeNull().ShouldContain("order.cancelled");
        view.Branches.Select(b => b.Name).ShouldBe(["order", "payment", "inventory"]);
        view.Op("payment", "payment.reserved").Attempts.ShouldBe(1);
        view.Op("order", "order.created").Result.ShouldNotBeNull().GetProperty("amount").GetInt32().ShouldBe(25);

        var timeline = await Api.EventsAsync(coordinator.Http, gid);
        var reported = timeline.Events.Where(e => e.Kind == "event").ToList();
        reported.Select(e => $"{e.Branch}:{e.Op}").ShouldBe(
            ["order:order.created", "payment:payment.reserved", "inventory:inventory.failed", "payment:payment.refunded", "order:order.cancelled", "order:order.confirmed"]);
        reported[0].Detail.ShouldNotBeNull().ShouldContain("reported at");
        reported[^1].Detail.ShouldNotBeNull().ShouldContain("after the saga ended");

        (await Api.ListAsync(coordinator.Http, "?protocol=choreography")).Items.ShouldContain(i => i.Gid == gid);
        (await Api.ListAsync(coordinator.Http, "?protocol=saga")).Items.ShouldNotContain(i => i.Gid == gid);
    }

    [Theory]
    [InlineData("""{ "type": "a", "service": "s", "correlationId": "g-1" }""", "messageId")]
    [InlineData("""{ "messageId": "m", "type": "a", "service": "s", "correlationId": "bad gid/" }""", "correlationId")]
    [InlineData("""{ "messageId": "m", "type": "a", "service": "s", "correlationId": "g-1", "outcome": "done" }""", "outcome")]
    [InlineData("""{ "messageId": "m", "type": "a", "service": "s", "correlationId": "g-1", "timeoutMs": -5 }""", "timeoutMs")]
    [InlineData("""{ "messageId": "m", "type": "a", "service": "s", "correlationId": "g-1", "at": "yesterday" }""", "at")]
    [InlineData("""{ "events": [ { "messageId": "m", "type": "a", "service": "s", "correlationId": "g-1" }, { "messageId": "m2", "service": "s", "correlationId": "g-1" } ] }""", "events[1].type")]
    [InlineData("""{ "events": [] }""", "events")]
    [InlineData("""[1, 2]""", "$")]
    public async Task InvalidReport_400NamingTheField_NothingStored(string body, string field)
    {
        await using var coordinator = await InProcessCoordinator.StartAsync();

        using var response = await Api.PostAsync(coordinator.Http, Events, body);

        var problem = await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest);
        problem.Errors.ShouldNotBeNull().Keys.ShouldContain(field);
        (await Api.GetAsync(coordinator.Http, "g-1")).ShouldBeNull();
    }

    [Fact]
    public async Task TooManyEvents_400_AndAGidOfAnotherProtocol_409()
    {
        await using var coordinator = await InProcessCoordinator.StartAsync();
        var many = string.Join(",", Enumerable.Range(0, ChoreographyEventParser.MaxBatch + 1).Select(i => EventJson("g-2", $"m{i}", "t", "s")));
        using (var response = await Api.PostAsync(coordinator.Http, Events, $$"""{ "events": [{{many}}] }"""))
        {
            (await Api.ReadProblemAsync(response, HttpStatusCode.BadRequest)).Errors.ShouldNotBeNull().Keys.ShouldContain("events");
        }

        using (var submit = await Api.PostAsync(coordinator.Http, Api.Transactions, """{ "protocol": "choreography", "branches": [] }"""))
        {
            (await Api.ReadProblemAsync(submit, HttpStatusCode.BadRequest)).Errors.ShouldNotBeNull().Keys.ShouldBe(["protocol"]);
        }

        var gid = Api.NewGid("saga");
        await coordinator.Client.Saga(gid).WithPayload(Api.Payload).Step("s1", "http://127.0.0.1:9/a", "http://127.0.0.1:9/c").SubmitAsync();
        using var clash = await Api.PostAsync(coordinator.Http, Events, EventJson(gid, "m1", "t", "s"));
        (await Api.ReadProblemAsync(clash, HttpStatusCode.Conflict)).Errors.ShouldNotBeNull().Keys.ShouldContain("correlationId");
    }

    [Fact]
    public async Task NoNextEventWithinTheTimeout_StuckWithTheAlert_RetryRestartsTheWait_AbortEndsIt()
    {
        await using var webhook = await WebhookReceiver.StartAsync();
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o =>
        {
            o.AlertWebhook = webhook.Url;
            o.AlertSecret = "alert-secret-0123456789";
            o.AlertRetryInitialDelay = TimeSpan.FromMilliseconds(50);
            o.AlertReconcileInterval = TimeSpan.FromMilliseconds(300);
        });
        var gid = Api.NewGid("stuckchoreo");
        await coordinator.Client.ReportEventsAsync([Event(gid, "m1", "order.created", "order"), Event(gid, "m2", "payment.reserved", "payment", timeoutMs: 300)]);

        var stuck = await Api.WaitUntilAsync(coordinator.Http, gid, v => v.Stuck, "stuck");
        stuck.Status.ShouldBe("running");
        stuck.StuckOn.ShouldNotBeNull().LastError.ShouldNotBeNull().ShouldContain("no next event within its timeout");
        stuck.StuckOn.Branch.ShouldBe("payment");
        var alert = await webhook.WaitForAsync(a => a.Kind == "stuck" && a.Gid == gid);
        alert.Body.GetProperty("stuckOn").GetProperty("op").GetString().ShouldBe("next-event");
        (await Api.ListAsync(coordinator.Http, "?stuck=true&protocol=choreography")).Items.ShouldContain(i => i.Gid == gid);

        (await coordinator.Client.RetryAsync(gid)).Stuck.ShouldBeFalse();
        await webhook.WaitForAsync(a => a.Kind == "resolved" && a.Gid == gid);
        await Api.WaitUntilAsync(coordinator.Http, gid, v => v.Stuck, "stuck again after the restarted wait");
        await webhook.WaitForAsync(a => a.Kind == "stuck" && a.Gid == gid && a.Id == $"{gid}/stuck/2");

        // An event clears the mark too: the saga moves again.
        (await coordinator.Client.ReportEventsAsync([Event(gid, "m3", "inventory.reserved", "inventory", timeoutMs: 60_000)])).Events[0].Status.ShouldBe("running");
        (await Api.GetAsync(coordinator.Http, gid)).ShouldNotBeNull().Stuck.ShouldBeFalse();
        await webhook.WaitForAsync(a => a.Kind == "resolved" && a.Gid == gid && a.Id == $"{gid}/resolved/2");

        var aborted = await coordinator.Client.AbortAsync(gid, "customer gave up");
        aborted.Status.ShouldBe("aborted");
        var timeline = await Api.EventsAsync(coordinator.Http, gid);
        timeline.Events.Select(e => e.Kind).ShouldContain("operator-abort");
        timeline.Events.Count(e => e.Kind == "stuck").ShouldBe(2);
    }

    [Fact]
    public async Task Restart_SameDataDir_StateIntactAndTheTimeoutStillWatched()
    {
        using var dataDir = new TempDir("treaty-choreo");
        var gid = Api.NewGid("restartchoreo");
        await using (var before = await InProcessCoordinator.StartAsync(dataDir: dataDir))
        {
            await before.Client.ReportEventsAsync([Event(gid, "m1", "order.created", "order"), Event(gid, "m2", "payment.reserved", "payment", timeoutMs: 1_500)]);
            (await Api.GetAsync(before.Http, gid)).ShouldNotBeNull().Stuck.ShouldBeFalse();
        }

        await using var after = await InProcessCoordinator.StartAsync(dataDir: dataDir);
        var view = (await Api.GetAsync(after.Http, gid)).ShouldNotBeNull();
        view.Protocol.ShouldBe("choreography");
        view.Branches.Select(b => b.Name).ShouldBe(["order", "payment"]);

        // The message ids survived: a relay reporting again after the restart changes nothing.
        var again = await after.Client.ReportEventsAsync([Event(gid, "m2", "payment.reserved", "payment", timeoutMs: 1_500)]);
        again.Events.ShouldHaveSingleItem().Result.ShouldBe("duplicate");

        var stuck = await Api.WaitUntilAsync(after.Http, gid, v => v.Stuck, "stuck after the restart");
        stuck.StuckOn.ShouldNotBeNull().Branch.ShouldBe("payment");

        await after.Client.ReportEventsAsync([Event(gid, "m3", "order.confirmed", "order", outcome: "completed")]);
        (await Api.GetAsync(after.Http, gid)).ShouldNotBeNull().ShouldSatisfyAllConditions(v => v.Status.ShouldBe("committed"), v => v.Stuck.ShouldBeFalse());
    }

    [Fact]
    public async Task Keys_NoKey401_ClientKeyReports_ClientKeyCannotRetry403()
    {
        await using var server = await SecureServer.StartAsync(SecureServer.WithKeys);
        var gid = Api.NewGid("keychoreo");
        using (var anonymous = await Api.PostAsync(server.Http(), Events, EventJson(gid, "m1", "order.created", "order")))
        {
            await Api.ReadProblemAsync(anonymous, HttpStatusCode.Unauthorized);
        }

        var client = server.Http(SecureServer.ClientSecret);
        using (var reported = await Api.PostAsync(client, Events, EventJson(gid, "m1", "order.created", "order")))
        {
            reported.StatusCode.ShouldBe(HttpStatusCode.OK);
        }

        using var retry = await client.PostAsync($"{Api.Transactions}/{gid}/retry", null);
        await Api.ReadProblemAsync(retry, HttpStatusCode.Forbidden);
        (await Api.GetAsync(server.Http(SecureServer.OperatorSecret), gid)).ShouldNotBeNull().Protocol.ShouldBe("choreography");
    }
}
