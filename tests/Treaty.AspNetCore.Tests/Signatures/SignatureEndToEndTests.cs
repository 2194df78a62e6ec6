using System.Text.Json;

namespace Treaty.AspNetCore.Tests.Signatures;

/// <summary>A real coordinator that signs (<c>CallbackSecret</c>) against a participant that verifies with the kit.</summary>
public sealed class SignatureEndToEndTests
{
    private const string Secret = "shared-callback-secret-01";
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);
    private static readonly JsonElement Payload = JsonSerializer.SerializeToElement(new Dictionary<string, object> { ["orderId"] = "o-1", ["amount"] = 25.5 });

    private static string NewGid(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    [Fact]
    public async Task SignatureEndToEnd_SameSecret_SagaCommitsAndEveryCallWasSigned()
    {
        // The participant's clock is the real one here: the coordinator signs with its own.
        await using var participant = await SignedParticipant.StartAsync(o => o.Secret = Secret, new ManualTimeProvider(TimeProvider.System.GetUtcNow()));
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.CallbackSecret = Secret);
        var gid = NewGid("signed");

        var view = await coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", participant.Url("branches/pay/action"), participant.Url("branches/pay/compensate"))
            .Step("ship", participant.Url("branches/ship/action"), participant.Url("branches/ship/compensate"))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("committed", view.Reason);
        participant.Handled.Select(c => c.Path).ShouldBe(["/branches/pay/action", "/branches/ship/action"]);
        participant.Handled.ShouldAllBe(c => c.Body.Contains(gid));
    }

    [Fact]
    public async Task SignatureEndToEnd_DifferentSecret_ParticipantAnswers401AndTheSagaAbortsWithoutRetrying()
    {
        await using var participant = await SignedParticipant.StartAsync(o => o.Secret = "a-different-secret-02", new ManualTimeProvider(TimeProvider.System.GetUtcNow()));
        await using var coordinator = await InProcessCoordinator.StartAsync(configureOptions: o => o.CallbackSecret = Secret);
        var gid = NewGid("missigned");

        var view = await coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", participant.Url("branches/pay/action"), participant.Url("branches/pay/compensate"))
            .SubmitAsync(wait: Wait);

        // 401 is a definitive 4xx: the handler never ran, so nothing was applied and nothing is retried.
        view.Status.ShouldBe("aborted");
        var action = view.Branches.Single(b => b.Name == "pay").Ops["action"];
        action.LastStatusCode.ShouldBe(401);
        action.Attempts.ShouldBe(1);
        action.LastError.ShouldNotBeNull().ShouldContain("Signature mismatch");
        action.LastError.ShouldNotContain(Secret);
        participant.Handled.ShouldBeEmpty();
    }

    [Fact]
    public async Task SignatureEndToEnd_CoordinatorWithoutSecret_ParticipantThatRequiresOne_Answers401Missing()
    {
        await using var participant = await SignedParticipant.StartAsync(o => o.Secret = Secret, new ManualTimeProvider(TimeProvider.System.GetUtcNow()));
        await using var coordinator = await InProcessCoordinator.StartAsync();
        var gid = NewGid("unsigned");

        var view = await coordinator.Client.Saga(gid).WithPayload(Payload)
            .Step("pay", participant.Url("branches/pay/action"), participant.Url("branches/pay/compensate"))
            .SubmitAsync(wait: Wait);

        view.Status.ShouldBe("aborted");
        view.Branches.Single().Ops["action"].LastError.ShouldNotBeNull().ShouldContain("Signature missing");
        participant.Handled.ShouldBeEmpty();
    }
}
