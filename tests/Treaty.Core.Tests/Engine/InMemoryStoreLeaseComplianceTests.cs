using Treaty.Core.Engine;
using Treaty.Testing;

namespace Treaty.Core.Tests.Engine;

/// <summary>
/// The lease rules, on the engine tests' in-memory store (<see cref="InMemoryTransactionStore"/>,
/// which keeps its leases in Core's <c>LeaseBook</c>). Only the lease part of the compliance suite:
/// that fake does not page listings with cursors (it never needed to), so the listing half of
/// <see cref="StoreComplianceTests"/> does not apply to it. One instance is all of its "database",
/// so the second instance is the same store.
/// </summary>
public sealed class InMemoryStoreLeaseComplianceTests : StoreLeaseComplianceTests
{
    protected override Task<ITransactionStore> CreateStoreAsync() =>
        Task.FromResult<ITransactionStore>(new InMemoryTransactionStore(new Timeline()));
}
