// DriverSetting, the declaration a driver reads its device parameters through,
// and PoolMemory, which says no (nil) to an allocation the pool cannot give
// instead of trapping.

import Testing
import WDM

@Suite struct DriverSettingTests {
    let size = DriverSetting.integer("Size", 512...(16 << 30), multipleOf: 512, bytes: true, default: 64 << 20, help: "bytes")
    let mode = DriverSetting.choice("Mode", ["fast", "slow"], default: "fast", help: "how")
    let label = DriverSetting.string("Label", maxLength: 4, default: "", help: "a name")
    let verbose = DriverSetting.boolean("Verbose", default: false, help: "log more")

    @Test func eachKindSaysWhyAValueIsNotOneOfIts() {
        #expect(size.problem(with: "4096") == nil && size.problem(with: "+512") == nil)
        #expect(size.problem(with: "big") == "must be an integer from 512 to 17179869184 (16 GiB)")
        #expect(size.problem(with: "") == "must be an integer from 512 to 17179869184 (16 GiB)")
        #expect(size.problem(with: "0x200") == "must be an integer from 512 to 17179869184 (16 GiB)")
        #expect(size.problem(with: "99999999999999999999") == "must be an integer from 512 to 17179869184 (16 GiB)")
        #expect(size.problem(with: "0") == "must be from 512 to 17179869184 (16 GiB)")
        #expect(size.problem(with: "1000") == "must be a multiple of 512")
        #expect(mode.problem(with: "slow") == nil && mode.problem(with: "Slow") == "must be one of fast, slow")
        #expect(label.problem(with: "abcd") == nil && label.problem(with: "abcde") == "must be at most 4 characters long")
        #expect(verbose.problem(with: "true") == nil && verbose.problem(with: "yes") == "must be true or false")
    }

    @Test func aDriverReadsTheDefaultOrTheValueAndNeverTraps() throws {
        #expect(try size.integer(in: [:]) == 64 << 20)
        #expect(try size.integer(in: ["Size": "8192", "Other": "x"]) == 8192)
        #expect(try mode.text(in: ["Mode": "slow"]) == "slow")
        #expect(try verbose.boolean(in: [:]) == false && verbose.boolean(in: ["Verbose": "true"]) == true)
        for bad in ["big", "1000000000000", "-512", String(Int.max), "99999999999999999999"] {
            #expect(throws: NTStatus.invalidParameter) { try size.integer(in: ["Size": bad]) }
        }
        #expect(throws: NTStatus.invalidParameter) { try mode.text(in: ["Mode": "sideways"]) }
        #expect(throws: NTStatus.invalidParameter) { try mode.integer(in: [:]) }  // not an integer setting
    }

    @Test func itDescribesItselfForTheTreeFile() {
        #expect(size.description == "Size: integer from 512 to 17179869184 (16 GiB), a multiple of 512; default 67108864 (64 MiB)")
        #expect(mode.description == "Mode: one of fast, slow; default fast")
        #expect(verbose.description == "Verbose: true or false; default false")
        #expect(label.description == "Label: text of at most 4 characters; default ")
    }
}

@Suite struct PoolMemoryTests {
    @Test func anAllocationThePoolCannotGiveIsNilNotATrap() {
        #expect(PoolMemory(byteCount: -1, tag: "Test") == nil)
        #expect(PoolMemory(byteCount: PoolMemory.limit + 1, tag: "Test") == nil)
        #expect(PoolMemory(byteCount: Int.max, tag: "Test") == nil)
        #expect(PoolMemory(byteCount: 1 << 62, tag: "Test") == nil)
    }

    @Test func itGivesZeroedMemoryAndTakesItBack() throws {
        let p = try #require(PoolMemory(byteCount: 4096, tag: "Test"))
        #expect(p.count == 4096 && UInt(bitPattern: p.baseAddress) % 64 == 0)
        #expect(p.bytes.allSatisfy { $0 == 0 })
        p.free()
        let empty = try #require(PoolMemory(byteCount: 0, tag: "Test"))
        #expect(empty.count == 0)
        empty.free()
    }
}
