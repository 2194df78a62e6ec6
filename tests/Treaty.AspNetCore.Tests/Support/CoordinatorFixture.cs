namespace Treaty.AspNetCore.Tests.Support;

/// <summary>One real in-process coordinator for a test class (transactions use fresh gids).</summary>
public sealed class CoordinatorFixture : IAsyncLifetime
{
    public InProcessCoordinator Coordinator { get; private set; } = null!;

    public async Task InitializeAsync() => Coordinator = await InProcessCoordinator.StartAsync(prefix: "treaty-kit-coordinator");

    public async Task DisposeAsync()
    {
        if (Coordinator is not null)
        {
            await Coordinator.DisposeAsync();
        }
    }
}
